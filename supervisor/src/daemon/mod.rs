//! havmsd: loads the config, serves the control socket, runs the heartbeat service, the witness
//! probe and the VM service (which runs each VM as its own `havms-vm` process, protects it and
//! decides failover), touches the alive file while those make progress, and reloads on SIGHUP.
//! Every service reads the one [`state::Shared`]. If a worker thread dies, havmsd exits and init
//! starts a fresh one, which adopts the engines that kept running meanwhile.

pub mod control;
pub mod liveness;
pub mod signals;
pub mod state;
pub mod workers;

use crate::daemon::liveness::Progress;
use crate::peer;
use crate::protocol::{Request, Response};
use anyhow::{Context, Result};
use clap::Parser;
use havms_config::paths;
use state::{Settings, Shared};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// havmsd, the HAVmS supervisor.
#[derive(Debug, Parser)]
#[command(name = "havmsd", version)]
pub struct Args {
    /// The cluster configuration file.
    #[arg(long, default_value = paths::CONFIG_FILE)]
    pub config: PathBuf,
    /// This node's name [default: havms.node= on the kernel command line, else /var/lib/havms/node].
    #[arg(long)]
    pub node: Option<String>,
    /// The control socket.
    #[arg(long, default_value = paths::CONTROL_SOCKET)]
    pub socket: PathBuf,
    /// Where heartbeats are received (and sent from).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], paths::HEARTBEAT_PORT)))]
    pub heartbeat_bind: SocketAddr,
    /// Send heartbeats here instead of the peer's configured link and LAN addresses (host tests).
    #[arg(long)]
    pub peer_addr: Option<SocketAddr>,
    /// Touched about every second while havmsd's workers make progress; init kills havmsd when it
    /// goes stale.
    #[arg(long, default_value = liveness::ALIVE_FILE)]
    pub alive_file: PathBuf,
    /// The VM engine program (one process per VM).
    #[arg(long, default_value = "/usr/bin/havms-vm")]
    pub engine: PathBuf,
    /// Where each engine's sockets, lock and log are (a directory per VM).
    #[arg(long, default_value = crate::engine::spec::VMS_DIR)]
    pub vms_dir: PathBuf,
    /// The operator's run/stop word per VM, kept across reboots.
    #[arg(long, default_value = crate::vms::intent::INTENTS_FILE)]
    pub intents_file: PathBuf,
}

/// A random id for this run of havmsd; std's RandomState is seeded from the OS's random source.
fn new_boot_id() -> u64 {
    RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()))
}

/// Runs havmsd until SIGTERM or SIGINT.
pub fn run(args: Args) -> Result<()> {
    signals::block()?;
    let node = crate::node::node_name(args.node.as_deref());
    let boot_id = new_boot_id();
    log::info!(
        "starting: node {}, config {}, boot id {boot_id:016x}",
        node.as_deref().unwrap_or("(unknown)"),
        args.config.display()
    );
    let shared = Shared::new(Settings {
        node,
        config_path: args.config,
        peer_addr: args.peer_addr,
        boot_id,
    });

    let mut watchdog = liveness::Watchdog::new(
        args.alive_file.clone(),
        liveness::TOUCH_EVERY,
        liveness::STALE_AFTER,
    );

    let listener = control::bind(&args.socket)?;
    log::info!("control socket {}", args.socket.display());
    let handler_state = Arc::clone(&shared);
    let handler: Arc<control::Handler> = Arc::new(move |req| handle(&handler_state, req));
    let progress = watchdog.watch("control");
    workers::spawn_critical("control", move || {
        control::serve(listener, handler, control::IO_TIMEOUT, progress)
    })
    .context("starting the control thread")?;

    let hb_state = Arc::clone(&shared);
    let bind = args.heartbeat_bind;
    let progress = watchdog.watch("heartbeat");
    workers::spawn_critical("heartbeat", move || {
        peer::service::run(hb_state, bind, progress)
    })
    .context("starting the heartbeat thread")?;

    let w_state = Arc::clone(&shared);
    let w_shared = Arc::clone(&shared.witness);
    let progress = watchdog.watch("witness");
    workers::spawn_critical("witness", move || {
        let addr_state = Arc::clone(&w_state);
        crate::witness::probe::run(
            w_shared,
            move || {
                let node = addr_state.settings.node.clone()?;
                addr_state.config()?.witness_for(&node)
            },
            move || {
                w_state
                    .plan()
                    .map_or(std::time::Duration::from_millis(200), |p| p.heartbeat)
            },
            progress,
        )
    })
    .context("starting the witness thread")?;

    let vm_state = Arc::clone(&shared);
    let opts = crate::vms::service::Options {
        engine: args.engine.clone(),
        vms_dir: args.vms_dir.clone(),
        intents_file: args.intents_file.clone(),
    };
    let progress = watchdog.watch("vms");
    workers::spawn_critical("vms", move || {
        crate::vms::service::run(vm_state, opts, progress)
    })
    .context("starting the VM service")?;

    if let Some(addr) = metrics_addr(&shared) {
        let m_state = Arc::clone(&shared);
        // Not critical: a node without metrics still runs its VMs.
        let spawned = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || crate::metrics::serve(m_state, addr, Progress::new()));
        if let Err(e) = spawned {
            log::error!("metrics: no thread: {e}");
        }
    }

    log::info!("alive file {}", args.alive_file.display());
    workers::spawn_critical("liveness", move || watchdog.run())
        .context("starting the liveness thread")?;

    signals::wait_loop(&shared, &args.socket)
}

fn handle(shared: &Shared, req: Request) -> Response {
    match req {
        Request::Status => Response::Status(Box::new(shared.status())),
        Request::Reload => match shared.reload() {
            Ok(config) => Response::Reloaded { config },
            Err(e) => Response::Error(format!("reload failed: {e}")),
        },
        Request::VmList => Response::Vms(shared.vm_status()),
        Request::VmStart { name, force: false } => {
            done(shared.vm_request(crate::vms::service::VmRequest::Start(name)))
        }
        Request::VmStart { name, force: true } => {
            done(shared.vm_request(crate::vms::service::VmRequest::ForceStart(name)))
        }
        Request::VmStop { name } => {
            done(shared.vm_request(crate::vms::service::VmRequest::Stop(name)))
        }
        Request::Switchover { name } => {
            done(shared.vm_request(crate::vms::service::VmRequest::Switchover(name)))
        }
        Request::Maintenance { node, on, force } => {
            done(shared.vm_request(crate::vms::service::VmRequest::Maintenance { node, on, force }))
        }
        Request::Resolve { name, keep } => {
            done(shared.vm_request(crate::vms::service::VmRequest::Resolve { name, keep }))
        }
    }
}

/// Where `/metrics` listens: this node's static LAN address (any address with DHCP), the
/// config's port; None when off or unconfigured.
fn metrics_addr(shared: &Shared) -> Option<SocketAddr> {
    let cfg = shared.config()?;
    if cfg.metrics_port == 0 {
        return None;
    }
    let node = shared.settings.node.clone()?;
    let ip = match &cfg.node(&node)?.lan.addressing {
        havms_config::LanAddressing::Static { address, .. } => address.addr,
        havms_config::LanAddressing::Dhcp => std::net::Ipv4Addr::UNSPECIFIED,
    };
    Some(SocketAddr::from((ip, cfg.metrics_port)))
}

fn done(r: Result<String, String>) -> Response {
    match r {
        Ok(message) => Response::Done { message },
        Err(e) => Response::Error(e),
    }
}
