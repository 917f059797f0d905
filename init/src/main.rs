//! havms-init: PID 1 of a HAVmS node.
//!
//! Boot: early mounts, kernel modules (KVM, virtio, NICs, ...), the data partition, hostname and
//! network, the watchdog; then it supervises havmsd and the console menus, reaps every process
//! on the node, and turns SIGTERM/SIGINT/SIGUSR1/SIGUSR2 into an orderly reboot/halt/power off
//! (docs/node-runtime.md). Every step logs its failure and boot goes on to a usable console:
//! PID 1 never exits and never panics out of `main`.

mod alive;
mod backoff;
mod cmdline;
mod datafs;
mod kvm;
mod logger;
mod logrotate;
mod modules;
mod mounts;
mod network;
mod reaper;
mod services;
mod shutdown;
mod signals;
mod watchdog;

use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use havms_config::paths::{CONFIG_FILE, LOG_FILE, MODULES_LIST, NODE_NAME_FILE};

use alive::AliveWatch;
use cmdline::KernelArgs;
use datafs::DataFs;
use services::{Io, Spec, Supervisor, PATH};
use signals::{action_for, Signals};
use watchdog::Watchdog;

const HAVMSD: &str = "/usr/bin/havmsd";
/// The service name of havmsd in the supervisor (and in its log lines).
const HAVMSD_SERVICE: &str = "havmsd";
const HAVMS_CLI: &str = "/usr/bin/havms";
/// Runs instead of the first console's menu when the kernel line says `havms.install`.
const INSTALLER: &str = "/usr/bin/havms-installer";
/// The main loop wakes at least this often even with nothing to do.
const IDLE: Duration = Duration::from_secs(10);

/// Runs a boot step; a panic inside it is logged and replaced by `fallback`.
fn guarded<T>(what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            log::error!("{what}: internal error (panic); carrying on");
            fallback
        }
    }
}

/// Gives the console to whichever of fds 0-2 is not a terminal. When the initramfs had no
/// /dev/console the kernel started us with them closed, and Rust's runtime reopened them on
/// /dev/null before `main`: "is open" says nothing, "is a tty" does. Runs once devtmpfs is
/// mounted, and before the signalfd exists, so dup2 can never replace a descriptor we use.
fn ensure_stdio() {
    // SAFETY: isatty only queries the descriptor.
    let missing: Vec<i32> = (0..=2)
        .filter(|fd| unsafe { libc::isatty(*fd) } != 1)
        .collect();
    if missing.is_empty() {
        return;
    }
    let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    for target in missing {
        if console.as_raw_fd() != target {
            // SAFETY: dup2 onto a standard descriptor; its previous file (/dev/null or nothing)
            // is not used by anything else in init.
            unsafe { libc::dup2(console.as_raw_fd(), target) };
        }
    }
    if console.as_raw_fd() <= 2 {
        // It landed on a standard descriptor that was closed: that one stays open.
        std::mem::forget(console);
    }
}

fn read_cmdline() -> String {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

fn default_consoles() -> Vec<String> {
    ["ttyS0", "tty1"]
        .into_iter()
        .filter(|t| Path::new("/dev").join(t).exists())
        // A serial port the kernel probed and found no UART behind reports type 0.
        .filter(|t| {
            std::fs::read_to_string(format!("/sys/class/tty/{t}/type"))
                .map_or(true, |ty| ty.trim() != "0")
        })
        .map(str::to_string)
        .collect()
}

fn load_modules(args: &KernelArgs) -> modules::load::Loader {
    let mut loader = modules::load::Loader::open(&modules::load::modules_dir());
    let list = match std::fs::read_to_string(MODULES_LIST) {
        Ok(text) => modules::list::parse(&text),
        Err(e) => {
            log::warn!("{MODULES_LIST}: {e}; loading only havms.extra_modules");
            Vec::new()
        }
    };
    let vendor = modules::load_boot_modules(&mut loader, &list, args);
    kvm::report(&vendor);
    loader
}

fn node_config(node: Option<&str>) -> Option<havms_config::NodeConfig> {
    let Some(node) = node else {
        logger::say(&format!(
            "unconfigured: no node name (havms.node= or {NODE_NAME_FILE}); only lo is up"
        ));
        return None;
    };
    if !Path::new(CONFIG_FILE).exists() {
        logger::say(&format!("unconfigured: no {CONFIG_FILE}; only lo is up"));
        return None;
    }
    match havms_config::load(Path::new(CONFIG_FILE)) {
        Ok(cfg) => {
            let found = cfg.node(node).cloned();
            if found.is_none() {
                logger::say(&format!(
                    "node {node} is not in {CONFIG_FILE}; only lo is up"
                ));
            }
            found
        }
        Err(e) => {
            logger::say(&format!("config: ERROR {e}; only lo is up"));
            None
        }
    }
}

fn service_specs(args: &KernelArgs) -> Vec<Spec> {
    let env = vec![
        ("PATH".to_string(), PATH.to_string()),
        ("RUST_LOG".to_string(), args.log.clone()),
        ("HOME".to_string(), "/root".to_string()),
    ];
    let mut specs = vec![Spec {
        name: HAVMSD_SERVICE.into(),
        program: HAVMSD.into(),
        args: Vec::new(),
        io: Io::Append(LOG_FILE.into()),
        env: env.clone(),
    }];
    let consoles = args.consoles.clone().unwrap_or_else(default_consoles);
    for (i, tty) in consoles.into_iter().enumerate() {
        // One installer (on the serial console by default): two asking at once would race.
        let spec = if args.install && i == 0 {
            Spec {
                name: format!("installer {tty}"),
                program: INSTALLER.into(),
                args: Vec::new(),
                io: Io::Tty(tty),
                env: env.clone(),
            }
        } else {
            Spec {
                name: format!("console {tty}"),
                program: HAVMS_CLI.into(),
                args: vec!["console".into()],
                io: Io::Tty(tty),
                env: env.clone(),
            }
        };
        specs.push(spec);
    }
    specs
}

struct Node {
    signals: Option<Signals>,
    sup: Supervisor,
    data: DataFs,
    watchdog: Option<Watchdog>,
    alive: AliveWatch,
}

fn boot() -> Node {
    // ctrl-alt-del becomes SIGINT to us instead of an immediate reboot.
    let cad = nix::sys::reboot::set_cad_enabled(false);
    let mount_errors = mounts::mount_early();
    ensure_stdio();
    // After ensure_stdio: its dup2 can never land on the signalfd. Until here signals to
    // PID 1 with the default disposition are dropped, and we have no children yet.
    let signals = match Signals::new() {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("havms-init: {e:#}; signals will not be handled");
            None
        }
    };
    // Our own log lines would be rate-limited by the kernel otherwise.
    let _ = std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n");
    let cmdline = read_cmdline();
    let args = cmdline::parse(&cmdline);
    logger::init(logger::level_from_rust_log(&args.log));
    logger::say("starting");
    for e in mount_errors {
        log::error!("{e:#}");
    }
    if let Err(e) = cad {
        log::error!("disabling ctrl-alt-del: {e}");
    }

    let mut loader = guarded("modules", None, || Some(load_modules(&args)));
    let data = guarded("data partition", DataFs::Tmpfs, || {
        let mounted = if args.install {
            datafs::tmpfs_for_installer()
        } else {
            datafs::mount_data()
        };
        mounted.unwrap_or_else(|e| {
            log::error!("{e:#}");
            DataFs::Tmpfs
        })
    });
    let node = havms_config::node_name(&cmdline, Path::new(NODE_NAME_FILE));
    let hostname = network::hostname_for(node.as_deref());
    guarded("hostname", (), || network::set_hostname(&hostname));
    let node_cfg = guarded("config", None, || node_config(node.as_deref()));
    let net_services = guarded("network", Vec::new(), || {
        network::bring_up(node_cfg.as_ref(), &hostname)
    });
    let watchdog = guarded("watchdog", None, || {
        let loader = loader.as_mut()?;
        Watchdog::open(loader)
            .map_err(|e| log::error!("watchdog: {e:#}; a hung node will not reset itself"))
            .ok()
    });

    let mut sup = Supervisor::default();
    for spec in service_specs(&args).into_iter().chain(net_services) {
        sup.add(spec);
    }
    guarded("services", (), || sup.start_due(Instant::now()));
    logger::say("boot complete");
    Node {
        signals,
        sup,
        data,
        watchdog,
        alive: AliveWatch::new(alive::ALIVE_FILE),
    }
}

/// One turn of the main loop: wait for a signal or a deadline, reap, respawn, pet.
fn turn(node: &mut Node) {
    let now = Instant::now();
    let mut next = now + IDLE;
    if let Some(due) = node.sup.next_due() {
        next = next.min(due);
    }
    if let Some(w) = &node.watchdog {
        next = next.min(w.next_due());
    }
    if let Some(due) = node.alive.next_due() {
        next = next.min(due);
    }
    let timeout = next
        .saturating_duration_since(now)
        .max(Duration::from_millis(10));
    let sigs = match node.signals.as_mut() {
        Some(s) => s.wait(timeout).unwrap_or_else(|e| {
            log::error!("{e:#}");
            std::thread::sleep(Duration::from_secs(1));
            Vec::new()
        }),
        None => {
            std::thread::sleep(timeout.min(Duration::from_secs(1)));
            Vec::new()
        }
    };
    if let Some(action) = sigs.iter().find_map(|s| action_for(*s)) {
        let watchdog = node.watchdog.take();
        shutdown::run(action, &mut node.sup, &node.data, watchdog);
    }
    let now = Instant::now();
    for (pid, status) in reaper::reap_all() {
        if !node.sup.on_exit(pid, &status, now) {
            log::debug!("reaped pid {pid}: {}", reaper::describe(&status));
        }
    }
    node.sup.start_due(now);
    let havmsd = node.sup.running_since(HAVMSD_SERVICE);
    if let Some((pid, silence)) = node.alive.check(havmsd, now) {
        logger::say(&format!(
            "havmsd is hung (no sign of life for {} s); killing it",
            silence.as_secs()
        ));
        // The reaper sees it die and the supervisor restarts it as after any crash.
        if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
            log::error!("killing havmsd (pid {pid}): {e}");
        }
    }
    match logrotate::rotate_if_big(Path::new(LOG_FILE), logrotate::ROTATE_AT) {
        Ok(true) => log::info!("{LOG_FILE} rotated (previous lines in {LOG_FILE}.1)"),
        Ok(false) => {}
        Err(e) => log::error!("rotating {LOG_FILE}: {e}"),
    }
    if let Some(w) = node.watchdog.as_mut() {
        w.tick(now);
    }
}

fn main() {
    if nix::unistd::getpid().as_raw() != 1 {
        eprintln!("havms-init: this is the init of a HAVmS node and must run as PID 1; refusing");
        std::process::exit(2);
    }
    let mut node = match catch_unwind(boot) {
        Ok(node) => node,
        // Even a panic outside every guarded step leaves a node that reaps and reboots.
        Err(_) => {
            log::error!("boot: internal error (panic); continuing with what is up");
            Node {
                signals: Signals::new().ok(),
                sup: Supervisor::default(),
                data: DataFs::Tmpfs,
                watchdog: None,
                alive: AliveWatch::new(alive::ALIVE_FILE),
            }
        }
    };
    loop {
        if catch_unwind(AssertUnwindSafe(|| turn(&mut node))).is_err() {
            log::error!("main loop: internal error (panic); carrying on");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_from_kernel_args() {
        let args = cmdline::parse("havms.consoles=ttyS1,tty2 havms.log=debug");
        let specs = service_specs(&args);
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["havmsd", "console ttyS1", "console tty2"]);
        assert_eq!(specs[0].program.to_str(), Some(HAVMSD));
        assert_eq!(specs[0].io, Io::Append(LOG_FILE.into()));
        assert_eq!(specs[1].io, Io::Tty("ttyS1".into()));
        assert_eq!(specs[2].args, vec!["console"]);
        for s in &specs {
            assert!(s.env.contains(&("RUST_LOG".into(), "debug".into())));
            assert!(s.env.contains(&("PATH".into(), PATH.into())));
        }
        // An empty list means no console menu at all.
        assert_eq!(service_specs(&cmdline::parse("havms.consoles=")).len(), 1);
        // The install entry: the installer on the first console, the menu on the others.
        let specs = service_specs(&cmdline::parse("havms.consoles=ttyS0,tty1 havms.install"));
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["havmsd", "installer ttyS0", "console tty1"]);
        assert_eq!(specs[1].program.to_str(), Some(INSTALLER));
    }
}
