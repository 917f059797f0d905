//! This node's identity and configuration: its name (kernel command line or node file) and the config
//! file checked for this node. Shared by havmsd and by the CLI when havmsd is down, so both judge a
//! config file the same way.

use crate::status::ConfigState;
use havms_config::{paths, Config, ConfigError};
use std::io::ErrorKind;
use std::path::Path;

/// The node's name: `explicit` (a flag) wins, then `havms.node=` on /proc/cmdline, then the node file.
pub fn node_name(explicit: Option<&str>) -> Option<String> {
    if let Some(n) = explicit {
        return Some(n.to_string());
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    havms_config::node_name(&cmdline, Path::new(paths::NODE_NAME_FILE))
}

/// The outcome of reading the config for one node.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// Valid, and names this node and its peer.
    Ok(Box<Config>),
    /// Present but unusable.
    Error(ConfigError),
    /// No file: the node is unconfigured.
    Missing,
}

impl Loaded {
    /// The status form of this outcome for the file at `path`.
    pub fn state(&self, path: &Path) -> ConfigState {
        match self {
            Loaded::Ok(_) => ConfigState::Ok {
                path: path.display().to_string(),
            },
            Loaded::Error(e) => ConfigState::Error {
                error: e.to_string(),
            },
            Loaded::Missing => ConfigState::None {
                path: path.display().to_string(),
            },
        }
    }
}

/// Loads and validates `path`, then checks it describes `node` (a config that does not name this node
/// cannot be acted on).
pub fn load_for_node(path: &Path, node: Option<&str>) -> Loaded {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Loaded::Missing,
        _ => {}
    }
    match havms_config::load(path).and_then(|cfg| check_node(cfg, path, node)) {
        Ok(cfg) => Loaded::Ok(Box::new(cfg)),
        Err(e) => Loaded::Error(e),
    }
}

/// Checks that a valid `cfg` describes `node` and its peer.
pub fn check_node(cfg: Config, path: &Path, node: Option<&str>) -> Result<Config, ConfigError> {
    let err = |reason: String| ConfigError {
        file: path.display().to_string(),
        line: None,
        reason,
    };
    let Some(node) = node else {
        return Err(err(format!(
            "this node has no name (boot with {}=NAME or write {})",
            paths::NODE_NAME_ARG,
            paths::NODE_NAME_FILE
        )));
    };
    if cfg.node(node).is_none() {
        let names: Vec<String> = cfg.nodes.iter().map(|n| n.name.to_string()).collect();
        return Err(err(format!(
            "this node `{node}` is not among the nodes ({})",
            names.join(", ")
        )));
    }
    if cfg.peer_of(node).is_none() {
        return Err(err(format!("node `{node}` has no peer in the config")));
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const EXAMPLE: &str = "\
cluster: demo
nodes:
  - name: a
    preferred_role: primary
    link: { interface: eth1, address: 10.99.0.1/24 }
    lan: { interface: eth0, bridge: br0, address: 192.168.77.11/24, gateway: 192.168.77.1 }
  - name: b
    preferred_role: secondary
    link: { interface: eth1, address: 10.99.0.2/24 }
    lan: { interface: eth0, bridge: br0, dhcp: true }
timings: { heartbeat_ms: 100, dead_after_ms: 500, fence_ms: 2000, epoch_ms: 50 }
vms: []
";

    fn temp(name: &str, text: Option<&str>) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("havms-node-test-{}-{name}", std::process::id()));
        if let Some(t) = text {
            std::fs::write(&p, t).unwrap();
        }
        p
    }

    #[test]
    fn outcomes() {
        let good = temp("good.yaml", Some(EXAMPLE));
        assert!(matches!(load_for_node(&good, Some("a")), Loaded::Ok(_)));
        match load_for_node(&good, Some("c")) {
            Loaded::Error(e) => assert!(
                e.to_string().contains("`c` is not among the nodes (a, b)"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(load_for_node(&good, None), Loaded::Error(_)));

        let bad = temp(
            "bad.yaml",
            Some(&EXAMPLE.replace("vms: []", "vms: []\nbogus: 1")),
        );
        match load_for_node(&bad, Some("a")) {
            Loaded::Error(e) => assert_eq!(e.line, Some(13), "{e}"),
            other => panic!("{other:?}"),
        }
        let missing = temp("missing.yaml", None);
        assert!(matches!(
            load_for_node(&missing, Some("a")),
            Loaded::Missing
        ));
        assert_eq!(
            Loaded::Missing.state(&missing),
            ConfigState::None {
                path: missing.display().to_string()
            }
        );
        for p in [good, bad] {
            std::fs::remove_file(p).unwrap();
        }
    }
}
