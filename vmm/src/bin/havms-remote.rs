//! `havms-remote`: control a running `havms-vm` through its API socket (verbs as ch-remote).
//!
//! havms-remote --api-socket S pause|resume|info|shutdown|snapshot DIR [--incremental]
//! havms-remote --api-socket S gate on|off | epoch N | commit N
//! havms-remote --api-socket S protect HOST:PORT [--epoch-ms N] [--name NAME] | unprotect | release
//! havms-remote --api-socket S takeover [--force] | mark-stale [REASON]   (on a replica)
//! havms-remote --api-socket S events [--count N] [--seconds S]           (the event stream)

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use havms_vmm::api::{call, Request, Subscription};

#[derive(Parser, Debug)]
#[command(
    name = "havms-remote",
    about = "Control a havms-vm through its API socket"
)]
struct Args {
    #[arg(long)]
    api_socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Park every vCPU.
    Pause,
    /// Run again.
    Resume,
    /// Print the VM's state as JSON.
    Info,
    /// Stop the VM (havms-vm exits 0).
    Shutdown,
    /// Write the full state of a paused VM to DIR (state.json + memory.bin); with
    /// --incremental, only the pages written since the previous capture (memory.diff + parent),
    /// pausing a running VM just for the capture. DIR may be file:///ABSOLUTE/PATH.
    Snapshot {
        dir: String,
        #[arg(long)]
        incremental: bool,
    },
    /// Output gating of every NIC: on holds guest frames per epoch, off passes them.
    Gate {
        #[arg(value_parser = ["on", "off"])]
        mode: String,
    },
    /// Guest frames from now on belong to epoch N.
    Epoch { n: u64 },
    /// Epoch N is committed: release held frames of epochs <= N.
    Commit { n: u64 },
    /// Replicate the VM continuously to a replica (`havms-vm --replica-listen`) at HOST:PORT:
    /// a full copy, then a checkpoint every --epoch-ms; guest output waits for each epoch's ack.
    Protect {
        to: String,
        #[arg(long)]
        epoch_ms: Option<u64>,
        /// The VM's name on the wire (a replica started with --replica-name insists on it).
        #[arg(long)]
        name: Option<String>,
        /// No ack for this long fails the stream (its output is then held until `release`).
        #[arg(long)]
        ack_timeout_ms: Option<u64>,
    },
    /// Stop replicating: the peer marks its copy stale, then output flows.
    Unprotect,
    /// After a failed stream: let the held output flow (only when the peer cannot take over).
    Release,
    /// On a replica: start the VM from its last committed epoch (failover).
    Takeover {
        /// Even if the primary said it stopped protecting (the copy is behind what it ran on).
        #[arg(long)]
        force: bool,
    },
    /// A check of the replication: hash memory and disks at EPOCH on this side (`info` shows
    /// it as replication.verify).
    Verify { epoch: u64 },
    /// On a replica: never take this copy over (its primary stopped protecting it).
    MarkStale {
        reason: Option<String>,
        /// Even a copy its primary handed over (`handover`): that copy is the VM.
        #[arg(long)]
        force: bool,
    },
    /// On a protected primary: a planned switchover. The last checkpoint leaves the guest
    /// paused for good; once the peer acked it and took the Handover, this engine exits and
    /// the peer's supervisor (or `takeover`) resumes the VM there.
    Handover { reason: Option<String> },
    /// Print the engine's events (one JSON line each) as they come.
    Events {
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this long.
        #[arg(long)]
        seconds: Option<f64>,
    },
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("havms-remote: {}", havms_vmm::error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

fn events(path: &std::path::Path, count: Option<u64>, seconds: Option<f64>) -> Result<()> {
    let mut sub =
        Subscription::open(path).with_context(|| format!("subscribing to {}", path.display()))?;
    let t0 = std::time::Instant::now();
    let limit = seconds.map(std::time::Duration::from_secs_f64);
    let mut n = 0u64;
    loop {
        if count.is_some_and(|c| n >= c) || limit.is_some_and(|l| t0.elapsed() >= l) {
            return Ok(());
        }
        if let Some(ev) = sub.next_event(std::time::Duration::from_millis(200))? {
            println!("{}", serde_json::to_string(&ev)?);
            n += 1;
        }
    }
}

fn run(args: Args) -> Result<()> {
    let req = match args.cmd {
        Cmd::Events { count, seconds } => return events(&args.api_socket, count, seconds),
        Cmd::Pause => Request::Pause,
        Cmd::Resume => Request::Resume,
        Cmd::Info => Request::Info,
        Cmd::Shutdown => Request::Shutdown,
        Cmd::Snapshot { dir, incremental } => {
            // The server resolves nothing relative: send it absolute.
            let dir = if dir.contains("://") || dir.starts_with('/') {
                PathBuf::from(dir)
            } else {
                std::env::current_dir()
                    .context("current directory")?
                    .join(dir)
            };
            Request::Snapshot { dir, incremental }
        }
        Cmd::Gate { mode } => Request::Gate { on: mode == "on" },
        Cmd::Epoch { n } => Request::Epoch { n },
        Cmd::Commit { n } => Request::Commit { n },
        Cmd::Protect {
            to,
            epoch_ms,
            name,
            ack_timeout_ms,
        } => Request::Protect {
            to,
            epoch_ms,
            name,
            ack_timeout_ms,
            stream_id: None,
        },
        Cmd::Unprotect => Request::Unprotect,
        Cmd::Release => Request::Release,
        Cmd::Verify { epoch } => Request::Verify { epoch },
        Cmd::Takeover { force } => Request::Takeover { force },
        Cmd::MarkStale { reason, force } => Request::MarkStale {
            reason: reason.unwrap_or_default(),
            force,
        },
        Cmd::Handover { reason } => Request::Handover {
            reason: reason.unwrap_or_else(|| "havms-remote handover".into()),
        },
    };
    let resp = call(&args.api_socket, &req)
        .with_context(|| format!("talking to {}", args.api_socket.display()))?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_else(|| "failed".into()));
    }
    match resp.info {
        Some(info) => println!("{}", serde_json::to_string_pretty(&info)?),
        None => {
            let mut line = format!(
                "ok ({} us",
                resp.micros.map(|m| m.to_string()).unwrap_or_default()
            );
            if let Some(p) = resp.pause_micros {
                line.push_str(&format!(", paused {p} us"));
            }
            if let Some(n) = resp.pages {
                line.push_str(&format!(", {n} pages"));
            }
            if let Some(n) = resp.released {
                line.push_str(&format!(", {n} frames released"));
            }
            if let Some(e) = resp.epoch {
                line.push_str(&format!(", epoch {e}"));
            }
            if let Some(st) = &resp.stream {
                let state = serde_json::to_value(st.state)?;
                line.push_str(&format!(", stream {}", state.as_str().unwrap_or("?")));
                if let Some(e) = &st.error {
                    line.push_str(&format!(": {e}"));
                }
            }
            println!("{line})");
        }
    }
    Ok(())
}
