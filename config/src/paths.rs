//! Where things live on a running node. The single source of these names for init, havmsd, the CLI and the
//! tests; `docs/node-runtime.md` explains each one.

/// Mount point of the data partition (or a tmpfs when the node has none).
pub const DATA_DIR: &str = "/var/lib/havms";
/// The cluster configuration file.
pub const CONFIG_FILE: &str = "/var/lib/havms/havms.yaml";
/// This node's name, one line, written by the installer.
pub const NODE_NAME_FILE: &str = "/var/lib/havms/node";
/// Run-time state of havmsd.
pub const RUN_DIR: &str = "/run/havms";
/// havmsd's sign of life: it touches this file about every second while its threads make progress;
/// init SIGKILLs a havmsd whose file goes stale (fencing a hung supervisor).
pub const ALIVE_FILE: &str = "/run/havms/alive";
/// havmsd's control socket (JSON lines).
pub const CONTROL_SOCKET: &str = "/run/havms/havmsd.sock";
/// Directory of the node's log.
pub const LOG_DIR: &str = "/run/log";
/// The node's log: init's lines and havmsd's output.
pub const LOG_FILE: &str = "/run/log/havms.log";
/// Filesystem label of the data partition.
pub const DATA_LABEL: &str = "HAVMS-DATA";
/// Kernel modules init loads at boot.
pub const MODULES_LIST: &str = "/etc/havms/modules.list";
/// UDP port of the heartbeats between the two nodes.
pub const HEARTBEAT_PORT: u16 = 7400;
/// Kernel command line argument naming this node (overrides [`NODE_NAME_FILE`]).
pub const NODE_NAME_ARG: &str = "havms.node";
