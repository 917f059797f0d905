//! The node's network: lo, the back-to-back link (static address), the LAN bridge for guests
//! (static or DHCP), and the hostname. Each step failing is logged and the rest goes on.

pub mod dhcp;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use havms_config::{Cidr, LanAddressing, NodeConfig};

use crate::services::Spec;
use havms_net::netlink::{index_of, Rtnl};

/// NIC drivers register their interfaces a moment after the module loads.
const SETTLE: Duration = Duration::from_secs(3);

/// One thing to do to the network, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Up(String),
    Address(String, Cidr),
    Bridge(String),
    Enslave { port: String, bridge: String },
    DefaultRoute { via: Ipv4Addr, dev: String },
    Dhcp(String),
}

/// The hostname for a node name: `havms-a`, or `havms` when the node does not know its name.
pub fn hostname_for(node: Option<&str>) -> String {
    match node {
        Some(n) => format!("havms-{n}"),
        None => "havms".to_string(),
    }
}

/// What to do for this node's configuration (lo is brought up separately, always).
pub fn plan(node: &NodeConfig) -> Vec<Step> {
    let link = &node.link;
    let lan = &node.lan;
    let mut steps = vec![
        Step::Address(link.interface.clone(), link.address),
        Step::Up(link.interface.clone()),
        Step::Bridge(lan.bridge.clone()),
        Step::Enslave {
            port: lan.interface.clone(),
            bridge: lan.bridge.clone(),
        },
        Step::Up(lan.interface.clone()),
        Step::Up(lan.bridge.clone()),
    ];
    match &lan.addressing {
        LanAddressing::Static { address, gateway } => {
            steps.push(Step::Address(lan.bridge.clone(), *address));
            if let Some(gw) = gateway {
                steps.push(Step::DefaultRoute {
                    via: *gw,
                    dev: lan.bridge.clone(),
                });
            }
        }
        LanAddressing::Dhcp => steps.push(Step::Dhcp(lan.bridge.clone())),
    }
    steps
}

fn wait_for_interface(name: &str, deadline: Instant) {
    let path = Path::new("/sys/class/net").join(name);
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn apply_one(nl: &mut Rtnl, step: &Step, deadline: Instant) -> std::io::Result<()> {
    let idx = |name: &str| {
        wait_for_interface(name, deadline);
        index_of(name)
    };
    match step {
        Step::Up(dev) => nl.set_up(idx(dev)?),
        Step::Address(dev, cidr) => nl.add_address(idx(dev)?, cidr),
        Step::Bridge(name) => nl.create_bridge(name),
        Step::Enslave { port, bridge } => nl.set_controller(idx(port)?, idx(bridge)?),
        Step::DefaultRoute { via, dev } => nl.add_default_route(*via, idx(dev)?),
        // Started by the caller as a supervised service.
        Step::Dhcp(_) => Ok(()),
    }
}

fn describe(step: &Step) -> String {
    match step {
        Step::Up(dev) => format!("bringing {dev} up"),
        Step::Address(dev, cidr) => format!("adding {cidr} to {dev}"),
        Step::Bridge(name) => format!("creating bridge {name}"),
        Step::Enslave { port, bridge } => format!("adding {port} to bridge {bridge}"),
        Step::DefaultRoute { via, dev } => format!("default route via {via} dev {dev}"),
        Step::Dhcp(dev) => format!("DHCP on {dev}"),
    }
}

/// Brings lo up and, with a node configuration, the link and the LAN. Returns the services
/// to supervise (udhcpc when the LAN uses DHCP).
pub fn bring_up(node: Option<&NodeConfig>, hostname: &str) -> Vec<Spec> {
    let mut nl = match Rtnl::open() {
        Ok(nl) => nl,
        Err(e) => {
            log::error!("network: cannot open a netlink socket: {e}");
            return Vec::new();
        }
    };
    if let Err(e) = index_of("lo").and_then(|lo| nl.set_up(lo)) {
        log::error!("network: bringing lo up: {e}");
    }
    let Some(node) = node else {
        log::info!("network: unconfigured, only lo is up");
        return Vec::new();
    };
    let deadline = Instant::now() + SETTLE;
    let mut services = Vec::new();
    for step in plan(node) {
        match apply_one(&mut nl, &step, deadline) {
            Ok(()) => log::info!("network: {}", describe(&step)),
            Err(e) => log::error!("network: {}: {e}", describe(&step)),
        }
        if let Step::Dhcp(dev) = &step {
            services.push(dhcp::udhcpc_spec(dev, hostname));
        }
    }
    services
}

pub fn set_hostname(name: &str) {
    match nix::unistd::sethostname(name) {
        Ok(()) => log::info!("hostname {name}"),
        Err(e) => log::error!("setting the hostname to {name}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
cluster: demo
nodes:
  - name: a
    preferred_role: primary
    link: { interface: eth1, address: 10.99.0.1/24 }
    lan: { interface: eth0, bridge: br0, address: 192.168.77.11/24, gateway: 192.168.77.1 }
  - name: b
    preferred_role: secondary
    link: { interface: eth1, address: 10.99.0.2/24 }
    lan: { interface: eth0, dhcp: true }
vms: []
";

    #[test]
    fn static_and_dhcp_plans() {
        let cfg = havms_config::parse(YAML, "test.yaml").unwrap();
        let a = plan(cfg.node("a").unwrap());
        let cidr = |s: &str| s.parse::<Cidr>().unwrap();
        assert_eq!(
            a,
            vec![
                Step::Address("eth1".into(), cidr("10.99.0.1/24")),
                Step::Up("eth1".into()),
                Step::Bridge("br0".into()),
                Step::Enslave {
                    port: "eth0".into(),
                    bridge: "br0".into()
                },
                Step::Up("eth0".into()),
                Step::Up("br0".into()),
                Step::Address("br0".into(), cidr("192.168.77.11/24")),
                Step::DefaultRoute {
                    via: "192.168.77.1".parse().unwrap(),
                    dev: "br0".into()
                },
            ]
        );
        let b = plan(cfg.node("b").unwrap());
        assert_eq!(b.last(), Some(&Step::Dhcp("br0".into())));
        assert!(!b.iter().any(|s| matches!(s, Step::DefaultRoute { .. })));
    }

    #[test]
    fn hostnames() {
        assert_eq!(hostname_for(Some("a")), "havms-a");
        assert_eq!(hostname_for(None), "havms");
    }
}
