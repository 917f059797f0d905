//! The havms.yaml of an HA scenario: the pair of `cluster_config`, with VMs.

use crate::cluster_config::{pair_yaml, EPOCH_MS};
use crate::engine::payload::NODE_DIR;

/// One VM of the test config: the engine scenarios' guest in `mode`, its NIC on the LAN
/// bridge at `ip`.
#[derive(Debug, Clone)]
pub struct TestVm {
    pub name: &'static str,
    pub preferred: &'static str,
    pub mac: &'static str,
    /// The guest's LAN address (`/24`).
    pub ip: &'static str,
    /// guest-init.sh's mode (`protected`: counter, disk rounds, a TCP server of numbered lines
    /// on port 7000; `ledger`: the ledger service).
    pub mode: &'static str,
    pub memory_mib: u32,
    /// More guest kernel arguments (`pages=N` of the `dirty` mode, say).
    pub extra: String,
    pub autostart: bool,
    /// The size of its disk: a journaled ext4 image made on the host, the same on both nodes.
    pub disk_mib: u64,
    /// `failback: manual`: it stays where it runs once protected (a scenario that looks at a
    /// resync on the node the VM failed over to).
    pub failback_manual: bool,
}

impl TestVm {
    pub fn web() -> TestVm {
        TestVm {
            name: "web",
            preferred: "a",
            mac: "52:54:00:12:34:5a",
            ip: "192.168.77.50",
            mode: "protected",
            memory_mib: 256,
            extra: String::new(),
            autostart: true,
            disk_mib: crate::ha::boot::VM_DISK_MIB,
            failback_manual: false,
        }
    }

    /// The disk image's path on the data disk (relative) and as the node sees it.
    pub fn disk_rel(&self) -> String {
        format!("disks/{}.img", self.name)
    }

    pub fn disk(&self) -> String {
        format!("/var/lib/havms/{}", self.disk_rel())
    }

    /// The engine's API socket on a node.
    pub fn api(&self) -> String {
        format!("/run/havms/vms/{}/api.sock", self.name)
    }

    fn yaml(&self, marker: &str) -> String {
        format!(
            "  - name: {name}
    vcpus: 1
    memory_mib: {mem}
    kernel: {NODE_DIR}/vmlinuz
    initramfs: {NODE_DIR}/guest.cpio.gz
    cmdline: console=ttyS0 quiet panic=-1 initcall_blacklist=i8042_init guest={mode} marker={marker} ip={ip}/24 peer=192.168.77.1 {extra}
    disks: [{{ path: {disk} }}]
    nics: [{{ mac: '{mac}' }}]
    preferred_node: {pref}
    autostart: {auto}
    failback: {failback}
",
            name = self.name,
            mem = self.memory_mib,
            mode = self.mode,
            ip = self.ip,
            disk = self.disk(),
            mac = self.mac,
            pref = self.preferred,
            extra = self.extra,
            auto = self.autostart,
            failback = if self.failback_manual { "manual" } else { "auto" },
        )
    }
}

/// The pair config with `vms` (each guest writes `marker` to its disk).
pub fn yaml(vms: &[TestVm], marker: &str) -> String {
    yaml_with_epoch(vms, marker, EPOCH_MS)
}

/// `yaml` with `epoch_ms` instead of the test config's `EPOCH_MS`.
pub fn yaml_with_epoch(vms: &[TestVm], marker: &str, epoch_ms: u64) -> String {
    // A returning node proves itself for 3 s before a VM fails back to it (10 s by default).
    let base = pair_yaml().replace(
        &format!("epoch_ms: {EPOCH_MS}"),
        &format!("epoch_ms: {epoch_ms}, failback_delay_ms: 3000"),
    );
    let mut out = base.replace("vms: []\n", "vms:\n");
    for v in vms {
        out.push_str(&v.yaml(marker));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_valid_for_both_nodes() {
        let y = yaml(&[TestVm::web()], "M-1");
        let cfg = havms_config::parse(&y, "ha.yaml").unwrap();
        assert_eq!(cfg.vms.len(), 1);
        assert_eq!(cfg.vms[0].preferred_node, "a");
        assert_eq!(cfg.timings.failback_delay_ms, 3000);
        assert!(cfg.vms[0]
            .cmdline
            .contains("guest=protected marker=M-1 ip=192.168.77.50/24"));
    }
}
