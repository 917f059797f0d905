//! The configuration as the operator writes it: one struct per YAML mapping. Unknown keys are errors
//! (`deny_unknown_fields`) so a typo never silently falls back to a default.

use crate::types::{Cidr, MacAddr, Name};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// The whole cluster: both nodes, the witness, timings and the protected VMs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Cluster name; heartbeats from another cluster are ignored.
    pub cluster: Name,
    /// Exactly two nodes.
    pub nodes: Vec<NodeConfig>,
    /// Address that proves a node is not the isolated one (default: the LAN gateway).
    #[serde(default)]
    pub witness: Option<Ipv4Addr>,
    #[serde(default)]
    pub timings: Timings,
    /// TCP port of the Prometheus text endpoint (`/metrics`) on each node's LAN address; 0
    /// turns it off.
    #[serde(default = "default_metrics_port")]
    pub metrics_port: u16,
    #[serde(default)]
    pub vms: Vec<VmConfig>,
}

/// The metrics port unless the config says otherwise (9464: the port the Prometheus project
/// lists for OpenTelemetry-style exporters, free on a HAVmS node).
pub const DEFAULT_METRICS_PORT: u16 = 9464;

fn default_metrics_port() -> u16 {
    DEFAULT_METRICS_PORT
}

impl Config {
    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The other node of the pair, seen from `name`.
    pub fn peer_of(&self, name: &str) -> Option<&NodeConfig> {
        self.node(name)?;
        self.nodes.iter().find(|n| n.name != name)
    }

    /// The witness in force: the configured one, else the gateway of `node`'s LAN.
    pub fn witness_for(&self, node: &str) -> Option<Ipv4Addr> {
        self.witness
            .or_else(|| match &self.node(node)?.lan.addressing {
                LanAddressing::Static { gateway, .. } => *gateway,
                LanAddressing::Dhcp => None,
            })
    }
}

/// Which role a node takes when both come up together and nothing else decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Secondary,
}

/// One PC of the pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: Name,
    pub preferred_role: Role,
    /// The direct cable to the other node.
    pub link: LinkConfig,
    /// The network the VMs serve.
    pub lan: LanConfig,
}

/// The back-to-back link: always a static address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    pub interface: String,
    pub address: Cidr,
}

/// The LAN side: the physical interface is enslaved to a bridge that carries the node's address and the
/// guests' NICs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "LanConfigYaml", into = "LanConfigYaml")]
pub struct LanConfig {
    pub interface: String,
    pub bridge: String,
    pub addressing: LanAddressing,
}

/// How the LAN bridge gets its address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LanAddressing {
    Dhcp,
    Static {
        address: Cidr,
        gateway: Option<Ipv4Addr>,
    },
}

/// The YAML shape of [`LanConfig`]: either `dhcp: true` or `address:` (+ optional `gateway:`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LanConfigYaml {
    interface: String,
    #[serde(default = "default_bridge")]
    bridge: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    dhcp: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<Ipv4Addr>,
}

fn default_bridge() -> String {
    "br0".to_string()
}

impl TryFrom<LanConfigYaml> for LanConfig {
    type Error = String;
    fn try_from(y: LanConfigYaml) -> Result<Self, String> {
        let addressing =
            match (y.dhcp, y.address) {
                (true, None) if y.gateway.is_none() => LanAddressing::Dhcp,
                (true, _) => {
                    return Err(
                        "lan: `dhcp: true` cannot be combined with `address` or `gateway`".into(),
                    )
                }
                (false, Some(address)) => {
                    if let Some(gw) = y.gateway {
                        if !address.contains(gw) || gw == address.addr {
                            return Err(format!(
                                "lan: gateway {gw} is not another host in the subnet of {address}"
                            ));
                        }
                    }
                    LanAddressing::Static {
                        address,
                        gateway: y.gateway,
                    }
                }
                (false, None) => return Err(
                    "lan: give either `dhcp: true` or a static `address` (like 192.168.1.10/24)"
                        .into(),
                ),
            };
        Ok(LanConfig {
            interface: y.interface,
            bridge: y.bridge,
            addressing,
        })
    }
}

impl From<LanConfig> for LanConfigYaml {
    fn from(l: LanConfig) -> Self {
        let (dhcp, address, gateway) = match l.addressing {
            LanAddressing::Dhcp => (true, None, None),
            LanAddressing::Static { address, gateway } => (false, Some(address), gateway),
        };
        LanConfigYaml {
            interface: l.interface,
            bridge: l.bridge,
            dhcp,
            address,
            gateway,
        }
    }
}

/// The clocks of failure detection and replication, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timings {
    /// Interval between heartbeats on each path.
    pub heartbeat_ms: u64,
    /// Silence on every path after which the peer counts as dead.
    pub dead_after_ms: u64,
    /// How long an isolated node waits before it stops its VMs (and a secondary before taking over from a
    /// primary it cannot prove dead).
    pub fence_ms: u64,
    /// Checkpoint interval of replication.
    pub epoch_ms: u64,
    /// How long a VM away from its home node stays protected there before it fails back
    /// (`failback: auto`): the returning node proves itself first.
    pub failback_delay_ms: u64,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            heartbeat_ms: 100,
            dead_after_ms: 500,
            fence_ms: 2000,
            epoch_ms: 50,
            failback_delay_ms: 10_000,
        }
    }
}

/// A protected virtual machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub name: Name,
    #[serde(default = "one")]
    pub vcpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    #[serde(default)]
    pub nics: Vec<NicConfig>,
    /// The node the VM runs on when both are healthy (failback moves it there).
    pub preferred_node: Name,
    #[serde(default = "yes")]
    pub autostart: bool,
    /// Whether the VM moves back to its home node by itself once that node is back and in
    /// sync (`auto`), or stays where it runs, protected, until `havms switchover` (`manual`).
    #[serde(default)]
    pub failback: Failback,
}

/// A VM's failback policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failback {
    #[default]
    Auto,
    Manual,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// A raw disk image file of a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
}

/// A virtio-net NIC of a VM, attached to the LAN bridge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicConfig {
    pub mac: MacAddr,
}
