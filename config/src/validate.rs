//! Checks that need the whole configuration: counts, uniqueness, references between sections and
//! relations between timings. Each failure names the line of the value at fault; where the value
//! is not written as it parsed (YAML folded or escaped it, or it is a default), the line of its
//! key, else of the item it belongs to, else of its section: always a line of the file.

use crate::error::ConfigError;
use crate::locate::{line_of, line_of_after, line_of_key, line_of_key_after};
use crate::schema::{Config, LanAddressing};
use std::collections::HashSet;

/// VMs one pair runs (each node's heartbeat reports every VM).
pub const MAX_VMS: usize = 64;
/// Disks and NICs of one VM (the engine adds a virtio-rng and has 17 device slots).
pub const MAX_DEVICES: usize = 16;

/// Validates `cfg`, parsed from `text` of `file`.
pub fn validate(cfg: &Config, text: &str, file: &str) -> Result<(), ConfigError> {
    let err = |line: usize, reason: String| Err(ConfigError::new(file, Some(line), reason));
    let nodes_line = line_of_key(text, "nodes").unwrap_or(1);

    if cfg.nodes.len() != 2 {
        return err(
            nodes_line,
            format!(
                "a cluster has exactly 2 nodes, this one has {}",
                cfg.nodes.len()
            ),
        );
    }
    let (a, b) = (&cfg.nodes[0], &cfg.nodes[1]);
    // A node's own `name:` line (the first or second of that name), else the `nodes:` line.
    let node_line = |i: usize| {
        let node = &cfg.nodes[i];
        let nth = usize::from(i == 1 && a.name == b.name);
        line_of(text, "name", node.name.as_str(), nth).unwrap_or(nodes_line)
    };
    if a.name == b.name {
        return err(
            node_line(1),
            format!("node name `{}` is used twice", a.name),
        );
    }
    if a.preferred_role == b.preferred_role {
        return err(
            line_of(text, "preferred_role", role_word(b.preferred_role), 1)
                .or_else(|| line_of_key_after(text, node_line(1), "preferred_role"))
                .unwrap_or(node_line(1)),
            "one node must have `preferred_role: primary` and the other `preferred_role: secondary`".into(),
        );
    }
    for (i, node) in cfg.nodes.iter().enumerate() {
        // Both nodes usually use the same interface names: search from the node's own `name:` line.
        let node_line = node_line(i);
        for (what, ifname) in [
            ("link", &node.link.interface),
            ("lan", &node.lan.interface),
            ("lan bridge", &node.lan.bridge),
        ] {
            if let Err(reason) = check_ifname(ifname) {
                let key = if what == "lan bridge" {
                    "bridge"
                } else {
                    "interface"
                };
                let section =
                    line_of_key_after(text, node_line, what.split(' ').next().unwrap_or(what))
                        .unwrap_or(node_line);
                return err(
                    line_of_after(text, node_line, key, ifname)
                        .or_else(|| line_of_key_after(text, section, key))
                        .unwrap_or(section),
                    format!("node {}: {what} interface {reason}", node.name),
                );
            }
        }
        if node.link.interface == node.lan.interface {
            let lan = line_of_key_after(text, node_line, "lan").unwrap_or(node_line);
            return err(
                line_of_after(text, lan, "interface", &node.lan.interface).unwrap_or(lan),
                format!(
                    "node {}: link and LAN cannot share interface `{}`",
                    node.name, node.lan.interface
                ),
            );
        }
    }
    if a.link.address.addr == b.link.address.addr {
        let shown = a.link.address.to_string();
        return err(
            line_of(text, "address", &b.link.address.to_string(), 1)
                .or(line_of(text, "address", &shown, 0))
                .unwrap_or(node_line(1)),
            format!("both nodes have link address {}", a.link.address.addr),
        );
    }
    if !a.link.address.contains(b.link.address.addr)
        || a.link.address.prefix_len != b.link.address.prefix_len
    {
        return err(
            line_of(text, "address", &b.link.address.to_string(), 0).unwrap_or(node_line(1)),
            format!(
                "link addresses {} and {} are not in the same subnet",
                a.link.address, b.link.address
            ),
        );
    }
    if let (LanAddressing::Static { address: la, .. }, LanAddressing::Static { address: lb, .. }) =
        (&a.lan.addressing, &b.lan.addressing)
    {
        if la.addr == lb.addr {
            return err(
                line_of(text, "address", &lb.to_string(), 1).unwrap_or(node_line(1)),
                format!("both nodes have LAN address {}", la.addr),
            );
        }
    }

    // Without a witness a node that hears nothing cannot tell "my peer died" from "I am cut
    // off": it could never take a VM over safely (nor fence one). Only a pair with VMs needs
    // one.
    if !cfg.vms.is_empty() {
        for (i, node) in cfg.nodes.iter().enumerate() {
            if cfg.witness_for(node.name.as_str()).is_none() {
                let node_line = node_line(i);
                return err(
                    line_of_key_after(text, node_line, "lan").unwrap_or(node_line),
                    format!(
                        "node {}: no witness: its LAN has no static `gateway` and no top-level \
                         `witness:` is set; set `witness: <address>` to a host on the LAN that \
                         answers ping (the router), so a node that hears nothing can tell a dead \
                         peer from its own isolation",
                        node.name
                    ),
                );
            }
        }
    }

    let t = &cfg.timings;
    let tline = |key: &str| {
        line_of_key(text, key)
            .or(line_of_key(text, "timings"))
            .unwrap_or(1)
    };
    if !(10..=10_000).contains(&t.heartbeat_ms) {
        return err(
            tline("heartbeat_ms"),
            format!("heartbeat_ms {} must be 10 to 10000", t.heartbeat_ms),
        );
    }
    if t.dead_after_ms < 3 * t.heartbeat_ms {
        return err(
            tline("dead_after_ms"),
            format!(
                "dead_after_ms {} must be at least 3 heartbeats ({} ms), or one lost datagram kills the peer",
                t.dead_after_ms,
                3 * t.heartbeat_ms
            ),
        );
    }
    if t.fence_ms < t.dead_after_ms {
        return err(
            tline("fence_ms"),
            format!(
                "fence_ms {} must not be shorter than dead_after_ms {}",
                t.fence_ms, t.dead_after_ms
            ),
        );
    }
    if !(5..=10_000).contains(&t.epoch_ms) {
        return err(
            tline("epoch_ms"),
            format!("epoch_ms {} must be 5 to 10000", t.epoch_ms),
        );
    }
    const DAY_MS: u64 = 24 * 3600 * 1000;
    if t.failback_delay_ms > DAY_MS {
        return err(
            tline("failback_delay_ms"),
            format!(
                "failback_delay_ms {} is over a day ({DAY_MS}); use `failback: manual` on the \
                 VM to keep it where it runs",
                t.failback_delay_ms
            ),
        );
    }

    let vms_line = line_of_key(text, "vms").unwrap_or(1);
    if cfg.vms.len() > MAX_VMS {
        return err(
            vms_line,
            format!("{} VMs: a pair runs at most {MAX_VMS}", cfg.vms.len()),
        );
    }
    let mut vm_names = HashSet::new();
    let mut macs = HashSet::new();
    for vm in &cfg.vms {
        // The VM's `name:` line (after `vms:`: a node may have the same name), else `vms:`'s.
        let vm_line = line_of_after(text, vms_line, "name", vm.name.as_str()).unwrap_or(vms_line);
        if !vm_names.insert(vm.name.clone()) {
            return err(
                line_of_after(text, vm_line + 1, "name", vm.name.as_str()).unwrap_or(vm_line),
                format!("VM name `{}` is used twice", vm.name),
            );
        }
        if cfg.node(vm.preferred_node.as_str()).is_none() {
            return err(
                line_of_after(text, vm_line, "preferred_node", vm.preferred_node.as_str())
                    .or_else(|| line_of_key_after(text, vm_line, "preferred_node"))
                    .unwrap_or(vm_line),
                format!(
                    "VM {}: preferred_node `{}` is not one of the nodes ({}, {})",
                    vm.name, vm.preferred_node, a.name, b.name
                ),
            );
        }
        if !(1..=64).contains(&vm.vcpus) {
            return err(
                line_of_after(text, vm_line, "vcpus", &vm.vcpus.to_string())
                    .or_else(|| line_of_key_after(text, vm_line, "vcpus"))
                    .unwrap_or(vm_line),
                format!("VM {}: vcpus {} must be 1 to 64", vm.name, vm.vcpus),
            );
        }
        if !(32..=1 << 20).contains(&vm.memory_mib) {
            return err(
                line_of_after(text, vm_line, "memory_mib", &vm.memory_mib.to_string())
                    .or_else(|| line_of_key_after(text, vm_line, "memory_mib"))
                    .unwrap_or(vm_line),
                format!(
                    "VM {}: memory_mib {} must be 32 to 1048576",
                    vm.name, vm.memory_mib
                ),
            );
        }
        let paths = std::iter::once(("kernel", &vm.kernel))
            .chain(vm.initramfs.iter().map(|p| ("initramfs", p)))
            .chain(vm.disks.iter().map(|d| ("path", &d.path)));
        for (key, path) in paths {
            if !path.is_absolute() {
                let shown = path.display().to_string();
                return err(
                    line_of_after(text, vm_line, key, &shown)
                        .or_else(|| line_of_key_after(text, vm_line, key))
                        .unwrap_or(vm_line),
                    format!("VM {}: {key} `{shown}` must be an absolute path", vm.name),
                );
            }
        }
        if vm.disks.len() + vm.nics.len() > MAX_DEVICES {
            return err(
                line_of_key_after(text, vm_line, "nics").unwrap_or(vm_line),
                format!(
                    "VM {}: {} disks and {} NICs: at most {MAX_DEVICES} devices in all",
                    vm.name,
                    vm.disks.len(),
                    vm.nics.len()
                ),
            );
        }
        for nic in &vm.nics {
            if !macs.insert(nic.mac) {
                let shown = nic.mac.to_string();
                return err(
                    line_of(text, "mac", &shown, 1)
                        .or(line_of(text, "mac", &shown, 0))
                        .unwrap_or(vm_line),
                    format!("VM {}: MAC {shown} is used by another NIC", vm.name),
                );
            }
        }
    }
    Ok(())
}

fn role_word(r: crate::schema::Role) -> &'static str {
    match r {
        crate::schema::Role::Primary => "primary",
        crate::schema::Role::Secondary => "secondary",
    }
}

/// Linux interface names: 1 to 15 bytes, no `/`, no white space, not `.` or `..`.
fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("`{name}` must be 1 to 15 characters"));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(format!("`{name}` is not a valid interface name"));
    }
    Ok(())
}
