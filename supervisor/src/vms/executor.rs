//! Carries out one decision on one VM, on a thread of its own (a protect waits for the peer, a
//! takeover builds a VM: the VM service goes on deciding for the other VMs meanwhile), and
//! tells the service how it went. The only place that touches engines: API calls, spawning,
//! killing.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use havms_config::VmConfig;
use havms_vmm::api::{call_timeout, Request, Response};

use crate::copies::meta::CopyMeta;
use crate::copies::store;
use crate::engine::process;
use crate::engine::spec::{self, RunDir};
use crate::failover::Action;

use super::slot::Role;

/// What the service needs to know afterwards.
#[derive(Debug)]
pub enum Outcome {
    /// An engine was started (its pid); `Exited` follows when it ends.
    Started {
        role: Role,
        pid: u32,
    },
    /// The engine started by `Started` ended (status as text).
    Exited {
        status: String,
    },
    Done,
    /// A takeover ran the VM: how long its API call took.
    TookOver {
        took: Duration,
    },
    Failed(String),
}

/// A finished action.
#[derive(Debug)]
pub struct Done {
    pub vm: String,
    /// The slot's engine generation when the action was given (a late word of a replaced
    /// engine is recognised).
    pub generation: u64,
    pub action: Action,
    pub outcome: Outcome,
}

/// Everything an action needs, copied out of the service.
#[derive(Debug, Clone)]
pub struct Job {
    pub vm: VmConfig,
    pub dir: RunDir,
    pub engine: PathBuf,
    /// This node's link address (a replica listens there).
    pub my_link: Ipv4Addr,
    /// The peer's link address (protect connects there).
    pub peer_link: Ipv4Addr,
    pub bridge: String,
    pub epoch_ms: u64,
    /// No ack for this long fails a stream.
    pub ack_timeout_ms: u64,
    /// The running engine's pid, when there is one (fence, restart).
    pub pid: Option<u32>,
    pub generation: u64,
    /// The copy's metadata to save before the action runs (a new generation before the VM
    /// runs alone, "being synced" before a replica writes the copy), and where.
    pub copy_save: Option<CopyMeta>,
    pub copies_dir: PathBuf,
}

/// Saves the job's copy metadata, if it has any: an action that would run the VM alone or
/// overwrite the copy without it saved does not run.
fn save_copy(job: &Job) -> Result<(), String> {
    match &job.copy_save {
        Some(m) => store::save(&job.copies_dir, job.vm.name.as_str(), m)
            .map_err(|e| format!("saving its copy's metadata first: {e}")),
        None => Ok(()),
    }
}

/// How long an API call may take (a takeover builds a VM; a protect waits for the Hello).
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// A switchover's API call: the last epoch's ack and the Handover's CloseAck, each bounded by
/// the stream's ack timeout, and the engine's end.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(70);

/// How an error that came from the API socket itself (not an answer of the engine) begins:
/// what the engine did then is unknown.
pub const TRANSPORT_ERROR: &str = "engine API ";

fn api(job: &Job, req: &Request) -> Result<Response, String> {
    let r = call_timeout(&job.dir.api(), req, API_TIMEOUT)
        .map_err(|e| format!("{TRANSPORT_ERROR}{}: {e}", job.dir.api().display()))?;
    if r.ok {
        Ok(r)
    } else {
        Err(r.error.unwrap_or_else(|| "refused".into()))
    }
}

/// Runs `action` for `job` on a new thread; the outcome(s) go to `tx`.
pub fn spawn(action: Action, job: Job, tx: Sender<Done>) {
    let name = format!("act-{}", job.vm.name);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let vm = job.vm.name.to_string();
        let generation = job.generation;
        let send = |outcome| {
            let _ = tx.send(Done {
                vm: vm.clone(),
                generation,
                action: action.clone(),
                outcome,
            });
        };
        match &action {
            Action::StartPrimary | Action::StartReplica => {
                let role = if action == Action::StartPrimary {
                    Role::Primary
                } else {
                    Role::Replica
                };
                match save_copy(&job).and_then(|()| start(&job, role)) {
                    Ok(mut child) => {
                        send(Outcome::Started {
                            role,
                            pid: child.id(),
                        });
                        let status = match child.wait() {
                            Ok(s) => s.to_string(),
                            Err(e) => format!("waiting for it: {e}"),
                        };
                        send(Outcome::Exited { status });
                    }
                    Err(e) => send(Outcome::Failed(e)),
                }
            }
            other => send(match save_copy(&job).and_then(|()| act(other, &job)) {
                Ok(o) => o,
                Err(e) => Outcome::Failed(e),
            }),
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot start an action thread: {e}");
    }
}

/// Taps in place, the files checked (a primary), an engine already there stopped, then the
/// new engine spawned.
fn start(job: &Job, role: Role) -> Result<std::process::Child, String> {
    for i in 0..job.vm.nics.len() {
        let tap = spec::tap_name(job.vm.name.as_str(), i);
        havms_net::tap::ensure(&tap, &job.bridge)
            .map_err(|e| format!("vm {}: {e}", job.vm.name))?;
    }
    let args = match role {
        Role::Primary => {
            spec::preflight_primary(&job.vm)?;
            spec::primary_args(&job.vm, &job.dir)
        }
        Role::Replica => spec::replica_args(&job.vm, &job.dir, job.my_link),
    };
    // A replica giving way to a fresh primary (or anything left over) goes first: two engines
    // of one VM never run at once (the lock would refuse the second anyway).
    if let Some(pid) = job.pid {
        let _ = process::kill(pid);
    }
    let t0 = Instant::now();
    while let process::Probe::Running { .. } = process::probe(&job.dir) {
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "vm {}: an engine still holds {}",
                job.vm.name,
                job.dir.lock().display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    process::spawn(&job.engine, &args, &job.dir)
        .map_err(|e| format!("vm {}: starting {}: {e}", job.vm.name, job.engine.display()))
}

/// The switchover's API call. The engine ends right after it handed the VM over, and may be
/// gone before its answer is written: then its exit report says how it went.
fn hand_over(job: &Job) -> Result<Outcome, String> {
    let req = Request::Handover {
        reason: format!("switchover of {}", job.vm.name),
    };
    let answer = call_timeout(&job.dir.api(), &req, HANDOVER_TIMEOUT);
    let handed_over = |r: &Response| {
        r.stream
            .as_ref()
            .is_some_and(|s| s.state == havms_vmm::events::StreamState::HandedOver)
    };
    match answer {
        Ok(r) if r.ok && handed_over(&r) => Ok(Outcome::Done),
        Ok(r) if r.ok => Err(format!(
            "the switchover did not complete: {}",
            r.stream
                .and_then(|s| s.error)
                .unwrap_or_else(|| "no reason given".into())
        )),
        Ok(r) => Err(r.error.unwrap_or_else(|| "refused".into())),
        Err(e) => {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(3) {
                if process::ending(process::exit_report(&job.dir).as_ref())
                    == process::Ending::HandedOver
                {
                    return Ok(Outcome::Done);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(format!("engine API {}: {e}", job.dir.api().display()))
        }
    }
}

fn act(action: &Action, job: &Job) -> Result<Outcome, String> {
    match action {
        Action::Protect { port } => {
            let stream_id = havms_vmm::replication::primary::random_u64();
            api(
                job,
                &Request::Protect {
                    to: format!("{}:{port}", job.peer_link),
                    epoch_ms: Some(job.epoch_ms),
                    name: Some(job.vm.name.to_string()),
                    ack_timeout_ms: Some(job.ack_timeout_ms),
                    stream_id: Some(stream_id),
                },
            )?;
            Ok(Outcome::Done)
        }
        Action::Release => api(job, &Request::Release).map(|_| Outcome::Done),
        Action::MarkStale => api(
            job,
            &Request::MarkStale {
                reason: "its primary's stream failed (the primary asked)".into(),
                // A copy its primary handed over is the VM: the answer must be no.
                force: false,
            },
        )
        .map(|_| Outcome::Done),
        Action::TakeOver => {
            for i in 0..job.vm.nics.len() {
                let tap = spec::tap_name(job.vm.name.as_str(), i);
                if let Err(e) = havms_net::tap::ensure(&tap, &job.bridge) {
                    log::error!("vm {}: {e}", job.vm.name);
                }
            }
            let t0 = Instant::now();
            api(job, &Request::Takeover { force: false })?;
            Ok(Outcome::TookOver { took: t0.elapsed() })
        }
        Action::Fence => {
            // The pid the engine wrote into its lock, when havmsd did not start it itself.
            let pid = job.pid.or(match process::probe(&job.dir) {
                process::Probe::Running { pid } => pid,
                process::Probe::Gone => None,
            });
            match pid {
                Some(pid) => match process::kill(pid) {
                    // Gone already: nothing of it can send anything any more.
                    Ok(()) => Ok(Outcome::Done),
                    Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => Ok(Outcome::Done),
                    Err(e) => Err(format!("killing engine {pid}: {e}")),
                },
                None => Err("no engine pid to kill".into()),
            }
        }
        Action::Stop => api(job, &Request::Shutdown).map(|_| Outcome::Done),
        Action::Unprotect => api(job, &Request::Unprotect).map(|_| Outcome::Done),
        Action::HandOver => hand_over(job),
        // Bookkeeping only, done by the service itself.
        Action::AskStale | Action::StartPrimary | Action::StartReplica => Ok(Outcome::Done),
    }
}
