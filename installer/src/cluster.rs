//! The node's files on HAVMS-DATA built from the answers: `havms.yaml` (the same text on both
//! nodes when their answers agree: nodes in the order a, b) and `node`. The YAML is checked
//! with `havms-config`, the code the node runs, before the installer writes anything.

use anyhow::{Context, Result};

use crate::answers::{Answers, NodeId, PeerLan};

/// What goes onto the data partition.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFiles {
    /// `/var/lib/havms/havms.yaml`.
    pub config: String,
    /// `/var/lib/havms/node`: the node's name and a newline.
    pub node: String,
}

fn lan_static(address: &str, gateway: Option<std::net::Ipv4Addr>) -> String {
    match gateway {
        Some(g) => format!("address: {address}, gateway: {g}"),
        None => format!("address: {address}"),
    }
}

/// One `nodes:` item.
fn node_item(name: NodeId, link_if: &str, link: &str, lan_if: &str, lan: &str) -> String {
    let role = match name {
        NodeId::A => "primary",
        NodeId::B => "secondary",
    };
    format!(
        "  - name: {}\n    preferred_role: {role}\n    link: {{ interface: {link_if}, address: {link} }}\n    lan: {{ interface: {lan_if}, bridge: br0, {lan} }}\n",
        name.name()
    )
}

/// The configuration text the answers describe.
pub fn config_text(a: &Answers) -> String {
    let ours_lan = match a.lan.address {
        Some(address) if !a.lan.dhcp => lan_static(&address.to_string(), a.lan.gateway),
        _ => "dhcp: true".to_string(),
    };
    // The peer is on the same LAN, so behind the same gateway.
    let theirs_lan = match a.peer.lan_address {
        PeerLan::Dhcp => "dhcp: true".to_string(),
        PeerLan::Static(address) => lan_static(&address.to_string(), a.lan.gateway),
    };
    let ours = node_item(
        a.node,
        &a.link.interface,
        &a.link.address.to_string(),
        &a.lan.interface,
        &ours_lan,
    );
    let theirs = node_item(
        a.node.peer(),
        a.peer
            .link_interface
            .as_deref()
            .unwrap_or(&a.link.interface),
        &a.peer.link_address.to_string(),
        a.peer.lan_interface.as_deref().unwrap_or(&a.lan.interface),
        &theirs_lan,
    );
    let (first, second) = match a.node {
        NodeId::A => (ours, theirs),
        NodeId::B => (theirs, ours),
    };
    let witness = a
        .witness
        .map(|w| format!("witness: {w}\n"))
        .unwrap_or_default();
    format!(
        "# HAVmS cluster configuration, written by havms-installer (docs/configuration.md).\n\
         # The same file on both nodes; declare the VMs under `vms:`.\n\
         cluster: {}\nnodes:\n{first}{second}{witness}vms: []\n",
        a.cluster
    )
}

/// The files for the data partition, the configuration checked by havms-config first.
pub fn node_files(a: &Answers) -> Result<NodeFiles> {
    let config = config_text(a);
    havms_config::parse(&config, "havms.yaml").with_context(|| {
        format!("the configuration built from the answers is refused:\n{config}")
    })?;
    Ok(NodeFiles {
        config,
        node: format!("{}\n", a.node.name()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answers::{parse, EXAMPLE as GOOD};

    #[test]
    fn both_nodes_answers_give_the_same_checked_file() {
        let a = parse(GOOD, "a.yaml").unwrap();
        let b_text = GOOD
            .replace("node: a", "node: b")
            .replace("10.99.0.1/24", "X")
            .replace("10.99.0.2/24", "10.99.0.1/24")
            .replace("X", "10.99.0.2/24")
            .replace("192.168.77.11/24", "Y")
            .replace("192.168.77.12/24", "192.168.77.11/24")
            .replace("Y", "192.168.77.12/24");
        let b = parse(&b_text, "b.yaml").unwrap();
        let fa = node_files(&a).unwrap();
        let fb = node_files(&b).unwrap();
        assert_eq!(fa.config, fb.config);
        assert_eq!((fa.node.as_str(), fb.node.as_str()), ("a\n", "b\n"));
        let cfg = havms_config::parse(&fa.config, "havms.yaml").unwrap();
        assert_eq!(cfg.cluster.as_str(), "havms");
        assert_eq!(
            cfg.node("a").unwrap().link.address.to_string(),
            "10.99.0.1/24"
        );
        assert_eq!(
            cfg.node("b").unwrap().preferred_role,
            havms_config::Role::Secondary
        );
        assert_eq!(
            cfg.witness_for("b"),
            Some("192.168.77.1".parse().unwrap()),
            "the peer gets our gateway"
        );
    }

    #[test]
    fn dhcp_and_a_witness_and_other_nic_names() {
        let text =
            GOOD.replace(
                "  address: 192.168.77.11/24\n  gateway: 192.168.77.1\n",
                "  dhcp: true\n",
            )
            .replace(
                "lan_address: 192.168.77.12/24",
                "lan_address: dhcp\n  lan_interface: enp2s0",
            ) + "witness: 192.168.77.1\n";
        let a = parse(&text, "a.yaml").unwrap();
        let cfg = havms_config::parse(&node_files(&a).unwrap().config, "x").unwrap();
        assert_eq!(cfg.witness, Some("192.168.77.1".parse().unwrap()));
        assert_eq!(cfg.node("b").unwrap().lan.interface, "enp2s0");
        assert_eq!(
            cfg.node("a").unwrap().lan.addressing,
            havms_config::LanAddressing::Dhcp
        );
    }

    #[test]
    fn a_config_the_node_would_refuse_is_refused_here() {
        // node_files checks on its own, whatever the caller checked before.
        let mut a = parse(GOOD, "a.yaml").unwrap();
        a.cluster = "x".repeat(40);
        let e = format!("{:#}", node_files(&a).unwrap_err());
        assert!(e.contains("refused"), "{e}");
        assert!(e.contains("havms.yaml:"), "{e}");
    }
}
