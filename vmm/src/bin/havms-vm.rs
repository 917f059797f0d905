//! `havms-vm`: run one guest, Cloud Hypervisor style.
//!
//! havms-vm --kernel K [--initramfs I] [--cmdline C] [--cpus boot=N] [--memory size=M]
//!          [--serial file=F|socket=S|tty|null] [--api-socket S] [--no-reboot]
//! havms-vm --restore DIR [--serial ...] [--api-socket S] [--no-reboot]
//! havms-vm --restore DIR --memory-sha256
//! havms-vm --replica-listen HOST:PORT [--replica-name NAME] [--replica-disk PATH]...
//!          [--replica-net tap=T[,mac=M]]... [--serial ...] [--api-socket S]
//! Any of them: [--lock PATH] [--exit-file PATH]
//!
//! With --replica-listen it runs no VM at first: it receives a protected VM's replication
//! stream (`havms-remote protect HOST:PORT` on the primary) and keeps its replica until
//! `havms-remote takeover`, which starts the VM from the last committed epoch.
//! A guest reset reboots the guest in place (`havms_vmm::Machine`), unless `--no-reboot`.
//! Exit code 0 when the guest powers off (or resets, with --no-reboot) or the API asks for
//! shutdown, 1 on errors.
//!
//! `--lock PATH` holds an exclusive lock on PATH (with this process's pid in it) for the life of
//! the process: a second engine for the same VM refuses to start, which is how the supervisor
//! makes sure it never runs two (it adopts the one holding the lock). `--exit-file PATH` gets
//! one JSON line `{"reason":..,"code":..}` when the machine ends, so a supervisor that was not
//! there to see it still learns how it ended (no file and no process: it was killed).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use havms_vmm::api;
use havms_vmm::events::Events;
use havms_vmm::replication::compat::{LocalDevices, LocalNet};
use havms_vmm::replication::secondary::{ReplicaConfig, ReplicaServer};
use havms_vmm::replication::standby::Standby;
use havms_vmm::spec::{parse_cpus, parse_disk, parse_mac, parse_memory, parse_net, parse_serial};
use havms_vmm::{Console, Machine, OnReset, VmSpec};

#[derive(Parser, Debug)]
#[command(name = "havms-vm", about = "Run a Linux guest on KVM (HAVmS engine)")]
struct Args {
    /// bzImage to boot.
    #[arg(long, required_unless_present_any = ["restore", "replica_listen", "memcpy_bench", "tcp_bench"])]
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
    /// Restore from a snapshot directory instead of booting: DIR, file:///DIR or
    /// source_url=file:///DIR (Cloud Hypervisor's form).
    #[arg(long, conflicts_with_all = ["kernel", "initramfs", "cmdline", "cpus", "memory", "disk", "net", "rng"])]
    restore: Option<String>,
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
    /// order; one per disk of the VM: paths never come from the primary).
    #[arg(long, requires = "replica_listen")]
    replica_disk: Vec<PathBuf>,
    /// With --replica-listen: this node's tap for the VM's NIC N, and the MAC the primary must
    /// have given it (repeat in device order; one per NIC of the VM).
    #[arg(long, requires = "replica_listen")]
    replica_net: Vec<String>,
    /// Hold an exclusive lock on this file for the life of the process (refuse to start when
    /// another process holds it).
    #[arg(long)]
    lock: Option<PathBuf>,
    /// Write how the machine ended to this file (one JSON line) before exiting.
    #[arg(long)]
    exit_file: Option<PathBuf>,
    /// Benchmark baseline: copy PAGES 4 KiB pages from one buffer to another (a plain memcpy,
    /// what a checkpoint's pause does per dirty page at best), print the microseconds, exit.
    #[arg(long, value_name = "PAGES", exclusive = true)]
    memcpy_bench: Option<u64>,
    /// Benchmark baseline: raw TCP throughput. `listen=PORT` takes one connection, reads it to
    /// its end and prints the bytes and microseconds; `send=HOST:PORT,mib=N` sends N MiB.
    #[arg(long, value_name = "SPEC", exclusive = true)]
    tcp_bench: Option<String>,
}

/// The directory `--restore` names, in any of its accepted forms.
fn restore_dir(arg: &str) -> Result<PathBuf> {
    let url = arg.strip_prefix("source_url=").unwrap_or(arg);
    if url.contains("://") {
        return api::types::parse_location(url).map_err(anyhow::Error::msg);
    }
    Ok(PathBuf::from(url))
}

/// `tap=T[,mac=M]` of `--replica-net`.
fn parse_replica_net(s: &str) -> Result<LocalNet> {
    let mut tap = None;
    let mut mac = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("tap", t)) if !t.is_empty() => tap = Some(t.to_string()),
            Some(("mac", m)) => {
                mac = Some(parse_mac(m).with_context(|| format!("--replica-net {s}"))?)
            }
            _ => bail!("--replica-net {s}: expected tap=NAME[,mac=52:54:00:..]"),
        }
    }
    let Some(tap) = tap else {
        bail!("--replica-net {s}: tap=NAME is required");
    };
    Ok(LocalNet { tap, mac })
}

/// Takes the exclusive lock on `path` (kept open for the life of the process) and writes our
/// pid into it; fails naming the holder when another process has it.
fn take_lock(path: &Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    // SAFETY: flock on an fd we own, with constant flags; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        bail!(
            "{} is locked by another engine (pid {}): this VM already runs",
            path.display(),
            holder.trim()
        );
    }
    f.set_len(0)?;
    f.rewind()?;
    writeln!(f, "{}", std::process::id())?;
    Ok(f)
}

fn write_exit_file(path: &Path, reason: &str, code: i32) {
    let line = serde_json::json!({ "reason": reason, "code": code }).to_string();
    if let Err(e) = std::fs::write(path, format!("{line}\n")) {
        eprintln!("havms-vm: writing {}: {e}", path.display());
    }
}

fn build(args: &Args) -> Result<Machine> {
    let serial = parse_serial(&args.serial)?;
    let on_reset = if args.no_reboot {
        OnReset::Exit
    } else {
        OnReset::Reboot
    };
    if let Some(arg) = &args.restore {
        let dir = &restore_dir(arg)?;
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

/// `--memcpy-bench PAGES`: the median of 5 copies of PAGES pages (sources touched first, so
/// page faults are not timed).
fn memcpy_bench(pages: u64) -> Result<i32> {
    let bytes = usize::try_from(pages.saturating_mul(4096)).context("too many pages")?;
    let src: Vec<u8> = (0..bytes).map(|i| (i as u8).wrapping_mul(31)).collect();
    let mut dst = vec![0u8; bytes];
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        dst.copy_from_slice(&src);
        times.push(t.elapsed().as_micros());
        std::hint::black_box(&dst);
    }
    times.sort_unstable();
    println!("memcpy pages={pages} us={}", times[2]);
    Ok(0)
}

/// `--tcp-bench listen=PORT | send=HOST:PORT,mib=N`.
fn tcp_bench(spec: &str) -> Result<i32> {
    use std::io::{Read, Write};
    if let Some(port) = spec.strip_prefix("listen=") {
        let l = std::net::TcpListener::bind(("0.0.0.0", port.parse::<u16>()?))?;
        println!("tcp listening port={port}");
        let (mut s, _) = l.accept()?;
        let t = std::time::Instant::now();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        println!("tcp received bytes={total} us={}", t.elapsed().as_micros());
        return Ok(0);
    }
    let Some(rest) = spec.strip_prefix("send=") else {
        bail!("--tcp-bench {spec}: expected listen=PORT or send=HOST:PORT,mib=N");
    };
    let (to, mib) = rest
        .split_once(",mib=")
        .context("--tcp-bench send=HOST:PORT,mib=N")?;
    let mib: u64 = mib.parse()?;
    let mut s = std::net::TcpStream::connect(to)?;
    let buf = vec![0x5au8; 1 << 20];
    let t = std::time::Instant::now();
    for _ in 0..mib {
        s.write_all(&buf)?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let _ = s.read(&mut [0u8; 1]);
    println!(
        "tcp sent bytes={} us={}",
        mib << 20,
        t.elapsed().as_micros()
    );
    Ok(0)
}

fn run(args: &Args) -> Result<i32> {
    if let Some(pages) = args.memcpy_bench {
        return memcpy_bench(pages);
    }
    if let Some(spec) = &args.tcp_bench {
        return tcp_bench(spec);
    }
    if let (true, Some(arg)) = (args.memory_sha256, &args.restore) {
        let dir = &restore_dir(arg)?;
        let snap = havms_vmm::state::snapshot::Snapshot::read(dir)?;
        let mem = havms_vmm::vm::restore_memory(dir, snap.memory_mib)
            .with_context(|| format!("memory of {}", dir.display()))?;
        println!("{}", havms_vmm::memory::sha256(&mem));
        return Ok(0);
    }
    // Held until the process exits (the kernel drops the lock with the last fd).
    let _lock = match &args.lock {
        Some(p) => Some(take_lock(p)?),
        None => None,
    };
    if let Some(p) = &args.exit_file {
        let _ = std::fs::remove_file(p);
    }
    let machine = match &args.replica_listen {
        Some(addr) => match standby(args, addr)? {
            Some(m) => m,
            None => {
                eprintln!("havms-vm: replica shut down before any takeover");
                if let Some(p) = &args.exit_file {
                    write_exit_file(p, "replica shut down", 0);
                }
                remove_api_socket(args);
                return Ok(0);
            }
        },
        None => build(args)?,
    };
    if args.replica_listen.is_none() {
        if let Some(s) = &args.api_socket {
            api::spawn_server(machine.clone(), s)
                .with_context(|| format!("API socket {}", s.display()))?;
        }
    }
    if parse_serial(&args.serial)? == havms_vmm::SerialSpec::Tty {
        spawn_stdin_feeder(machine.clone());
    }
    // Closes the console (a socket console's file is removed) when it returns.
    let reason = machine.run();
    eprintln!("havms-vm: {reason} (boots: {})", machine.boots());
    if let Some(p) = &args.exit_file {
        write_exit_file(p, &reason.to_string(), reason.exit_code());
    }
    // Subscribers get the exit event before the process (and its API threads) goes.
    std::thread::sleep(std::time::Duration::from_millis(100));
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
    let nets = args
        .replica_net
        .iter()
        .map(|n| parse_replica_net(n))
        .collect::<Result<Vec<_>>>()?;
    let events = Events::new();
    let cfg = ReplicaConfig {
        expect_name: args.replica_name.clone(),
        local: LocalDevices {
            disks: args.replica_disk.clone(),
            nets,
        },
        check_cpu: true,
        events: events.clone(),
    };
    let server = ReplicaServer::listen(addr, cfg)
        .with_context(|| format!("listening for a replication stream on {addr}"))?;
    eprintln!("havms-vm: replica listening on {}", server.local_addr());
    let console = Console::open(&serial).context("opening the console")?;
    let standby = Standby::new(server, console, on_reset, events);
    if let Some(s) = &args.api_socket {
        api::spawn_server(standby.clone(), s)
            .with_context(|| format!("API socket {}", s.display()))?;
    }
    Ok(standby.wait())
}
