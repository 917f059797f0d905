//! The status as the CLI and the console menu get it: from havmsd when it answers, else read locally
//! (node name, uptime, config validity, KVM, interfaces) with the reason havmsd could not be asked.

use crate::client::Client;
use crate::node;
use crate::probe;
use crate::status::{ConfigStatus, DaemonInfo, PeerInfo, Status};
use havms_config::paths;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where to look, from the CLI's flags.
#[derive(Debug, Clone)]
pub struct Sources {
    pub socket: PathBuf,
    pub config: PathBuf,
    pub node: Option<String>,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            socket: paths::CONTROL_SOCKET.into(),
            config: paths::CONFIG_FILE.into(),
            node: None,
        }
    }
}

/// havmsd's status, or the local one when havmsd does not answer within `timeout`.
pub fn status(src: &Sources, timeout: Duration) -> Status {
    match Client::connect(&src.socket, timeout).and_then(|mut c| c.status()) {
        Ok(s) => s,
        Err(e) => local(src, &e.to_string()),
    }
}

/// What can be known without havmsd; `why` says why havmsd was not asked.
pub fn local(src: &Sources, why: &str) -> Status {
    let node = node::node_name(src.node.as_deref());
    let loaded = node::load_for_node(&src.config, node.as_deref());
    let cluster = match &loaded {
        node::Loaded::Ok(cfg) => Some(cfg.cluster.to_string()),
        _ => None,
    };
    Status {
        node,
        cluster,
        uptime_ms: probe::uptime::uptime_ms(),
        config: ConfigStatus {
            state: loaded.state(&src.config),
            last_reload_error: None,
        },
        kvm: probe::kvm::probe(),
        interfaces: probe::interfaces::probe(),
        peer: PeerInfo::Unknown {
            reason: "havmsd not running".into(),
        },
        witness: None,
        maintenance: None,
        vms: Vec::new(),
        daemon: DaemonInfo::NotRunning {
            socket: display(&src.socket),
            error: why.to_string(),
        },
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
