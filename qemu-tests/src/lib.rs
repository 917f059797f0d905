//! havms-qemu-tests: boots HAVmS nodes as QEMU TCG machines, wires them through hubs on
//! loopback, drives their serial consoles, injects faults (kill, power cycle, cut cables) and
//! checks what the nodes do. The `qemu-tests` binary runs the scenarios.

pub mod ansi;
pub mod artifacts;
pub mod bench;
pub mod cluster;
pub mod cluster_config;
pub mod console;
pub mod demo;
pub mod disk;
pub mod engine;
pub mod error;
pub mod gateway;
pub mod ha;
pub mod lan_client;
pub mod menu;
pub mod net;
pub mod node;
pub mod pcap;
pub mod procs;
pub mod qemu;
pub mod runner;
pub mod scenarios;
pub mod shell;
pub mod stall_watch;

pub use artifacts::Artifacts;
pub use cluster::{BootKind, Cluster, NodeOptions};
pub use console::{Console, Match};
pub use error::{HarnessError, Result};
pub use node::Node;
