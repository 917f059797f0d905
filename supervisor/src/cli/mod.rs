//! `havms`, the node's command line: status, reboot and power off, config checks, the serial
//! console menu (`havms console`, started by init on each console) and a VM console client
//! (`havms attach`).

pub mod attach;
pub mod config;
pub mod power;
pub mod status;
pub mod vm;

use crate::gather::Sources;
use crate::protocol::Request;
use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use havms_config::paths;
use std::path::PathBuf;
use std::time::Duration;

/// havms, the HAVmS node command line.
#[derive(Debug, Parser)]
#[command(name = "havms", version)]
pub struct Args {
    /// havmsd's control socket.
    #[arg(long, global = true, default_value = paths::CONTROL_SOCKET)]
    pub socket: PathBuf,
    /// The cluster configuration file (read directly when havmsd is down).
    #[arg(long, global = true, default_value = paths::CONFIG_FILE)]
    pub config: PathBuf,
    /// This node's name [default: havms.node= on the kernel command line, else /var/lib/havms/node].
    #[arg(long, global = true)]
    pub node: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Node, uptime, config, KVM, interfaces and peer.
    Status {
        /// Print the status as one JSON object.
        #[arg(long)]
        json: bool,
        /// Redraw every second until ctrl-c.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// Reboot the node (orderly: VMs and services stop first).
    Reboot {
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Power the node off (orderly).
    Poweroff {
        /// Do not ask for confirmation.
        #[arg(long, short)]
        yes: bool,
    },
    /// Check or reload the cluster configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// The VMs: list them, start or stop one, attach to one's console.
    Vm {
        #[command(subcommand)]
        action: VmAction,
    },
    /// Move a protected VM to the other node with nothing lost (a planned switchover: the
    /// last checkpoint, then the peer resumes it), and keep it there: it counts as placed on
    /// that node, and failback brings it back there after a failover. Refused with the reason
    /// when the peer's copy is not in sync. Run it again to move the VM back.
    Switchover { name: String },
    /// Put a node in maintenance, or end it: `on` moves every VM running on NODE to the other
    /// node with nothing lost (refused with the reason unless each is protected there in
    /// sync), then NODE keeps no copy and starts nothing, even across its reboots, so it can
    /// be powered off, repaired or upgraded; `off` protects the VMs onto it again, and those
    /// at home there go back by themselves (failback: auto). One node at a time.
    Maintenance {
        #[arg(value_enum)]
        state: OnOff,
        node: String,
        /// With `off` while the other node is down: run the VMs from this node's own (older)
        /// disks anyway.
        #[arg(long)]
        force: bool,
    },
    /// Settle a conflict between the two copies of a VM (`havms status` says `copies:
    /// diverged ...` when both nodes ran it alone, e.g. after a partition): keep NODE's copy.
    /// The other node's copy is set aside, never deleted (its disk images and metadata
    /// renamed with `.set-aside-GENERATION-TIME`), and brought up to date from NODE's.
    /// Refused with the reason when there is no conflict, or while the copy to set aside is
    /// running (stop the VM first: `havms vm stop NAME`).
    Resolve {
        name: String,
        /// The node whose copy is kept.
        #[arg(long, value_name = "NODE")]
        keep: String,
    },
    /// The serial console menu (init runs it on each console).
    Console,
    /// Connect to a VM's serial console socket (`havms-vm --serial socket=PATH`).
    ///
    /// A new connection first shows the last 64 KiB of the console, then live output, byte for
    /// byte. When stdin is a terminal it goes into raw mode (every key, ctrl-c included, goes to
    /// the guest) and `Ctrl-]` detaches. Otherwise stdin is copied to the console until it ends,
    /// then output is still printed for --linger seconds.
    ///
    /// Exit status: 0 when detached, when the VM closed the console (`SOCKET: console closed` on
    /// stderr), after --linger or --timeout; 1 when SOCKET cannot be connected or I/O fails.
    Attach {
        /// The VM's console socket (not --socket, which is havmsd's control socket).
        #[arg(value_name = "SOCKET")]
        path: PathBuf,
        /// After stdin (not a terminal) ends, keep printing output for SECONDS (fractions allowed).
        #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = attach::parse_seconds)]
        linger: Duration,
        /// Exit after SECONDS whatever happens (exit 0).
        #[arg(long, value_name = "SECONDS", value_parser = attach::parse_seconds)]
        timeout: Option<Duration>,
        /// Never read stdin: only watch the output (the terminal is left as it is).
        #[arg(long)]
        no_input: bool,
    },
}

/// `on` or `off` (`havms maintenance on|off NODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
pub enum VmAction {
    /// Each VM: role and state on this node, replication figures, last failover.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Run the VM (both nodes agree; it starts on its preferred node when that one is up).
    Start {
        name: String,
        /// Boot this node's copy even while the peer is silent and may hold a newer one
        /// (`havms vm list` then says `not booted while the peer is silent: ...`): only when
        /// the peer is gone for good, since whatever it ran past this copy is lost.
        #[arg(long)]
        force: bool,
    },
    /// Stop the VM wherever it runs (hard stop; its replica is discarded, never taken over).
    Stop { name: String },
    /// The VM's serial console, when it runs on this node (Ctrl-] detaches).
    Console {
        name: String,
        /// Where havmsd keeps the engines' sockets.
        #[arg(long, default_value = crate::engine::spec::VMS_DIR)]
        vms_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate a config file: prints `ok (FILE)` or `FILE:LINE: REASON` (exit 1).
    Check {
        /// The file [default: --config].
        file: Option<PathBuf>,
    },
    /// Ask havmsd to reload its config (like SIGHUP) and print the outcome.
    Reload,
}

/// Runs the command; the result is the process exit code.
pub fn run(args: Args) -> Result<i32> {
    let src = Sources {
        socket: args.socket,
        config: args.config,
        node: args.node,
    };
    match args.command {
        Command::Status { json, watch } => status::run(&src, json, watch),
        Command::Reboot { yes } => power::run(power::Power::Reboot, yes),
        Command::Poweroff { yes } => power::run(power::Power::PowerOff, yes),
        Command::Config {
            action: ConfigAction::Check { file },
        } => Ok(config::check(
            file.as_deref().unwrap_or(&src.config),
            src.node.as_deref(),
        )),
        Command::Config {
            action: ConfigAction::Reload,
        } => config::reload(&src),
        Command::Vm { action } => match action {
            VmAction::List { json } => vm::run_list(&src, json),
            VmAction::Start { name, force } => vm::run_intent(&src, &name, true, force),
            VmAction::Stop { name } => vm::run_intent(&src, &name, false, false),
            VmAction::Console { name, vms_dir } => vm::run_console(&src, &vms_dir, &name),
        },
        Command::Switchover { name } => vm::run_request(&src, &Request::Switchover { name }),
        Command::Maintenance { state, node, force } => vm::run_request(
            &src,
            &Request::Maintenance {
                node,
                on: state == OnOff::On,
                force,
            },
        ),
        Command::Resolve { name, keep } => vm::run_request(&src, &Request::Resolve { name, keep }),
        Command::Console => crate::console::run(&src),
        Command::Attach {
            path,
            linger,
            timeout,
            no_input,
        } => attach::run(
            &path,
            &attach::Options {
                linger,
                timeout,
                no_input,
            },
        ),
    }
}
