//! A set of nodes wired to one LAN hub and one link hub, each with its own data disk.
//!
//! Dropping the cluster kills every node first, then stops the hubs.

use std::path::PathBuf;

use crate::artifacts::{fresh_dir, Artifacts};
use crate::cluster_config;
use crate::disk::{DataDisk, DiskFile, DATA_SIZE_MIB};
use crate::error::{HarnessError, Result};
use crate::net::Network;
use crate::node::Node;
use crate::qemu::{self, Boot, MachineSpec, Nic, Uefi};

/// How a node boots, before paths are filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BootKind {
    /// vmlinuz + initramfs.img with kernel arguments.
    Kernel,
    /// havms.iso through SeaBIOS.
    IsoBios,
    /// havms.iso through OVMF.
    IsoUefi,
}

/// What makes one node of a test cluster.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub name: String,
    /// 1 for a, 2 for b: MACs and addresses follow it.
    pub number: u8,
    pub boot: BootKind,
    /// havms.yaml on the data disk, verbatim.
    pub config_yaml: String,
    /// Kernel arguments after the base ones and `havms.node=NAME` (kernel boot only).
    pub extra_append: Vec<String>,
    pub no_reboot: bool,
    /// More files on the data disk, and its size.
    pub data_files: Vec<DiskFile>,
    pub data_size_mib: u32,
    pub memory_mib: u32,
}

impl NodeOptions {
    /// Node `name` number `number` booting the kernel with the pair configuration.
    pub fn new(name: &str, number: u8) -> NodeOptions {
        NodeOptions {
            name: name.to_string(),
            number,
            boot: BootKind::Kernel,
            config_yaml: cluster_config::pair_yaml(),
            extra_append: Vec::new(),
            no_reboot: false,
            data_files: Vec::new(),
            data_size_mib: DATA_SIZE_MIB,
            memory_mib: qemu::DEFAULT_MEMORY_MIB,
        }
    }
}

/// Nodes and the wires between them. Fields drop in order: nodes before the network.
pub struct Cluster {
    nodes: Vec<Node>,
    pub net: Network,
    pub artifacts: Artifacts,
    pub log_dir: PathBuf,
    pub work_dir: PathBuf,
}

impl Cluster {
    /// An empty cluster whose logs and disks go to fresh per-scenario directories.
    pub fn new(artifacts: &Artifacts, scenario: &str) -> Result<Cluster> {
        let log_dir = artifacts.log_dir(scenario);
        let work_dir = artifacts.work_dir(scenario);
        fresh_dir(&log_dir)?;
        fresh_dir(&work_dir)?;
        Ok(Cluster {
            nodes: Vec::new(),
            net: Network::new()?,
            artifacts: artifacts.clone(),
            log_dir,
            work_dir,
        })
    }

    /// Two nodes a and b with the pair configuration, booting the kernel, both started.
    pub fn pair(artifacts: &Artifacts, scenario: &str) -> Result<Cluster> {
        let mut c = Cluster::new(artifacts, scenario)?;
        c.add(NodeOptions::new("a", 1))?;
        c.add(NodeOptions::new("b", 2))?;
        c.start_all()?;
        Ok(c)
    }

    /// Adds a stopped node: writes its disk, wires its NICs, builds its machine.
    pub fn add(&mut self, opts: NodeOptions) -> Result<&mut Node> {
        let a = &self.artifacts;
        let boot = match opts.boot {
            BootKind::Kernel => {
                a.require(&[&a.vmlinuz, &a.initramfs])?;
                let mut append = format!("{} havms.node={}", qemu::BASE_APPEND, opts.name);
                for arg in &opts.extra_append {
                    append.push(' ');
                    append.push_str(arg);
                }
                Boot::Kernel {
                    vmlinuz: a.vmlinuz.clone(),
                    initramfs: a.initramfs.clone(),
                    append,
                }
            }
            BootKind::IsoBios => {
                a.require(&[&a.iso])?;
                Boot::IsoBios { iso: a.iso.clone() }
            }
            BootKind::IsoUefi => {
                a.require(&[&a.iso])?;
                Boot::IsoUefi {
                    iso: a.iso.clone(),
                    firmware: Uefi::prepare(&self.work_dir, &opts.name)?,
                }
            }
        };
        let disk = DataDisk {
            config_yaml: &opts.config_yaml,
            node_name: &opts.name,
            files: &opts.data_files,
            size_mib: opts.data_size_mib,
        }
        .create(&self.work_dir.join(format!("{}.data.img", opts.name)))?;
        let spec = MachineSpec {
            memory_mib: opts.memory_mib,
            boot,
            disk: Some(disk),
            extra_disks: Vec::new(),
            nics: self.nics(&opts.name, opts.number)?,
            no_reboot: opts.no_reboot,
        };
        let node = Node::new(&opts.name, opts.number, spec, &self.log_dir)?;
        Ok(self.push(node))
    }

    /// The two NICs of node `name` (number `number`), wired to the LAN and the link: eth0
    /// and eth1 in the node.
    pub fn nics(&self, name: &str, number: u8) -> Result<Vec<Nic>> {
        let lan = self.net.lan.attach(name)?;
        let link = self.net.link.attach(name)?;
        Ok(vec![
            Nic {
                id: "lan".into(),
                mac: qemu::mac(number, 1),
                pci_addr: qemu::LAN_PCI_SLOT,
                hub: lan.hub,
                local: lan.local,
            },
            Nic {
                id: "link".into(),
                mac: qemu::mac(number, 2),
                pci_addr: qemu::LINK_PCI_SLOT,
                hub: link.hub,
                local: link.local,
            },
        ])
    }

    /// Adds a node a scenario built itself (its own disks, say), stopped.
    pub fn push(&mut self, node: Node) -> &mut Node {
        self.nodes.push(node);
        let last = self.nodes.len() - 1;
        &mut self.nodes[last]
    }

    /// Starts every node that is not running.
    pub fn start_all(&mut self) -> Result<()> {
        for n in &mut self.nodes {
            n.start()?;
        }
        Ok(())
    }

    /// The node called `name`.
    pub fn node(&mut self, name: &str) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.name() == name)
            .ok_or_else(|| HarnessError::NoSuchNode {
                node: name.to_string(),
            })
    }

    /// All nodes.
    pub fn nodes(&mut self) -> &mut [Node] {
        &mut self.nodes
    }

    /// The network and the nodes at once: a scenario cuts wires while it holds shells on the
    /// nodes.
    pub fn net_and_nodes(&mut self) -> (&Network, &mut [Node]) {
        (&self.net, &mut self.nodes)
    }
}
