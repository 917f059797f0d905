//! `havms-vm`: run one guest, Cloud Hypervisor style.
//!
//! havms-vm --kernel K [--initramfs I] [--cmdline C] [--cpus boot=N] [--memory size=M]
//!          [--serial file=F|socket=S|tty|null] [--api-socket S] [--no-reboot]
//! havms-vm --restore DIR [--serial ...] [--api-socket S] [--no-reboot]
//! havms-vm --restore DIR --memory-sha256
//! havms-vm --replica-listen HOST:PORT [--replica-name NAME] [--replica-disk PATH]... [--serial ...]
//!          [--api-socket S]
//!
//! With --replica-listen it runs no VM at first: it receives a protected VM's replication
//! stream (`havms-remote protect HOST:PORT` on the primary) and keeps its replica until
//! `havms-remote takeover`, which starts the VM from the last committed epoch.
//! A guest reset reboots the guest in place (`havms_vmm::Machine`), unless `--no-reboot`.
//! Exit code 0 when the guest powers off (or resets, with --no-reboot) or the API asks for
//! shutdown, 1 on errors.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use havms_vmm::api::socket;
use havms_vmm::replication::secondary::ReplicaServer;
use havms_vmm::replication::standby::Standby;
use havms_vmm::spec::{parse_cpus, parse_disk, parse_memory, parse_net, parse_serial};
use havms_vmm::{Console, Machine, OnReset, VmSpec};

#[derive(Parser, Debug)]
#[command(name = "havms-vm", about = "Run a Linux guest on KVM (HAVmS engine)")]
struct Args {
    /// bzImage to boot.
    #[arg(long, required_unless_present_any = ["restore", "replica_listen"])]
    kernel: Option<PathBuf>,
    /// initramfs (cpio, optionally compressed).
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0")]
    cmdline: String,
    /// vCPUs: boot=N.
    #[arg(long, default_value = "boot=1")]
    cpus: String,
    /// Memory: size=M (K/M/G suffix).
    #[arg(long, default_value = "size=512M")]
    memory: String,
    /// Serial console: tty (stdout), file=PATH, socket=PATH (Unix socket server) or null.
    #[arg(long, default_value = "tty")]
    serial: String,
    /// virtio-blk disk: path=P[,readonly=on] (repeatable).
    #[arg(long)]
    disk: Vec<String>,
    /// virtio-net interface: tap=T,mac=M (repeatable).
    #[arg(long)]
    net: Vec<String>,
    /// Add a virtio-rng device.
    #[arg(long)]
    rng: bool,
    /// Control socket for havms-remote.
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// Restore from a snapshot directory instead of booting.
    #[arg(long, conflicts_with_all = ["kernel", "initramfs", "cmdline", "cpus", "memory", "disk", "net", "rng"])]
    restore: Option<PathBuf>,
    /// Register memory with KVM dirty logging from the start (needed for incremental
    /// snapshots).
    #[arg(long)]
    dirty_log: bool,
    /// With --restore: print the sha256 of the guest memory the snapshot (chain) holds, and
    /// exit without running it.
    #[arg(long, requires = "restore")]
    memory_sha256: bool,
    /// A guest reset ends the VM (exit 0) instead of rebooting it, as QEMU's -no-reboot.
    #[arg(long)]
    no_reboot: bool,
    /// Be the secondary of a protected VM: receive its replication stream on HOST:PORT and
    /// keep a replica until `havms-remote takeover` starts it.
    #[arg(long, conflicts_with_all = ["kernel", "initramfs", "restore", "cmdline", "cpus", "memory", "disk", "net", "rng"])]
    replica_listen: Option<String>,
    /// With --replica-listen: accept only streams of the VM of this name.
    #[arg(long, requires = "replica_listen")]
    replica_name: Option<String>,
    /// With --replica-listen: this node's copy of the VM's disk N is at PATH (repeat in device
    /// order), when not at the primary's path.
    #[arg(long, requires = "replica_listen")]
    replica_disk: Vec<PathBuf>,
}

fn build(args: &Args) -> Result<Machine> {
    let serial = parse_serial(&args.serial)?;
    let on_reset = if args.no_reboot {
        OnReset::Exit
    } else {
        OnReset::Reboot
    };
    if let Some(dir) = &args.restore {
        let m = Machine::restore(dir, &serial, on_reset)
            .with_context(|| format!("restoring from {}", dir.display()))?;
        if args.dirty_log {
            // Increments of the restored VM start from its next full snapshot.
            m.set_dirty_log(true).context("enabling the dirty log")?;
        }
        return Ok(m);
    }
    let Some(kernel) = &args.kernel else {
        bail!("--kernel is required unless --restore is given");
    };
    let mut spec = VmSpec::new(kernel);
    spec.initramfs = args.initramfs.clone();
    spec.cmdline = args.cmdline.clone();
    spec.cpus = parse_cpus(&args.cpus)?;
    spec.memory_mib = parse_memory(&args.memory)?;
    spec.serial = serial;
    spec.disks = args
        .disk
        .iter()
        .map(|d| parse_disk(d))
        .collect::<Result<_, _>>()?;
    spec.nets = args
        .net
        .iter()
        .map(|n| parse_net(n))
        .collect::<Result<_, _>>()?;
    spec.rng = args.rng;
    spec.dirty_log = args.dirty_log;
    Machine::boot(spec, on_reset)
        .with_context(|| format!("creating the VM for {}", kernel.display()))
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let code = match run(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("havms-vm: {}", havms_vmm::error_chain(e.as_ref()));
            1
        }
    };
    std::process::exit(code);
}

/// With `--serial tty`, what is typed on stdin goes to the guest's console (line by line: the
/// terminal stays in cooked mode), whichever boot of the machine is running.
fn spawn_stdin_feeder(vm: Machine) {
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    return;
                }
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let took = vm.serial_input(rest);
                    rest = &rest[took..];
                    if took == 0 {
                        // The UART FIFO is full until the guest reads it (or it reboots).
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
        });
}

fn run(args: &Args) -> Result<i32> {
    if let (true, Some(dir)) = (args.memory_sha256, &args.restore) {
        let snap = havms_vmm::state::snapshot::Snapshot::read(dir)?;
        let mem = havms_vmm::vm::restore_memory(dir, snap.memory_mib)
            .with_context(|| format!("memory of {}", dir.display()))?;
        println!("{}", havms_vmm::memory::sha256(&mem));
        return Ok(0);
    }
    let machine = match &args.replica_listen {
        Some(addr) => match standby(args, addr)? {
            Some(m) => m,
            None => {
                eprintln!("havms-vm: replica shut down before any takeover");
                remove_api_socket(args);
                return Ok(0);
            }
        },
        None => build(args)?,
    };
    if args.replica_listen.is_none() {
        if let Some(s) = &args.api_socket {
            socket::spawn_server(machine.clone(), s)
                .with_context(|| format!("API socket {}", s.display()))?;
        }
    }
    if parse_serial(&args.serial)? == havms_vmm::SerialSpec::Tty {
        spawn_stdin_feeder(machine.clone());
    }
    // Closes the console (a socket console's file is removed) when it returns.
    let reason = machine.run();
    eprintln!("havms-vm: {reason} (boots: {})", machine.boots());
    remove_api_socket(args);
    Ok(reason.exit_code())
}

fn remove_api_socket(args: &Args) {
    if let Some(s) = &args.api_socket {
        let _ = std::fs::remove_file(s);
    }
}

/// The secondary: serves the API for the replica until a takeover gives the machine to run
/// (or a shutdown ends it: None).
fn standby(args: &Args, addr: &str) -> Result<Option<Machine>> {
    let serial = parse_serial(&args.serial)?;
    let on_reset = if args.no_reboot {
        OnReset::Exit
    } else {
        OnReset::Reboot
    };
    let server = ReplicaServer::listen(addr, args.replica_name.clone(), args.replica_disk.clone())
        .with_context(|| format!("listening for a replication stream on {addr}"))?;
    eprintln!("havms-vm: replica listening on {}", server.local_addr());
    let console = Console::open(&serial).context("opening the console")?;
    let standby = Standby::new(server, console, on_reset);
    if let Some(s) = &args.api_socket {
        socket::spawn_server(standby.clone(), s)
            .with_context(|| format!("API socket {}", s.display()))?;
    }
    Ok(standby.wait())
}
