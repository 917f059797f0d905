//! havmsd: loads the config, serves the control socket, runs the heartbeat service, touches the alive
//! file while those make progress, and reloads on SIGHUP. If a worker thread dies, havmsd exits. Later issues add VM lifecycle, replication and failover as further services started here,
//! each reading the shared [`state::Shared`].

pub mod control;
pub mod liveness;
pub mod signals;
pub mod state;
pub mod workers;

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
    }
}
