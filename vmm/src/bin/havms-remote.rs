//! `havms-remote`: control a running `havms-vm` through its API socket (verbs as ch-remote).
//!
//! havms-remote --api-socket S pause|resume|info|shutdown|snapshot DIR [--incremental]
//! havms-remote --api-socket S gate on|off | epoch N | commit N
//! havms-remote --api-socket S protect HOST:PORT [--epoch-ms N] [--name NAME] | unprotect | takeover [--force]

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use havms_vmm::api::socket::{call, Request};

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
    /// pausing a running VM just for the capture.
    Snapshot {
        dir: PathBuf,
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
    },
    /// Stop replicating (output flows at once).
    Unprotect,
    /// On a replica: start the VM from its last committed epoch (failover).
    Takeover {
        /// Even if the primary said it stopped protecting (the copy is behind what it ran on).
        #[arg(long)]
        force: bool,
    },
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("havms-remote: {}", havms_vmm::error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let req = match args.cmd {
        Cmd::Pause => Request::Pause,
        Cmd::Resume => Request::Resume,
        Cmd::Info => Request::Info,
        Cmd::Shutdown => Request::Shutdown,
        Cmd::Snapshot { dir, incremental } => {
            // The server resolves the path in its own working directory: send it absolute.
            let dir = if dir.is_absolute() {
                dir
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
        Cmd::Protect { to, epoch_ms, name } => Request::Protect { to, epoch_ms, name },
        Cmd::Unprotect => Request::Unprotect,
        Cmd::Takeover { force } => Request::Takeover { force },
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
            println!("{line})");
        }
    }
    Ok(())
}
