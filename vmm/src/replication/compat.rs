//! What a takeover will need from this node, checked when a stream starts, so that a replica
//! this node could never run is refused at once with the reason, instead of failing at the
//! failover: the VM's disks at this node's own paths and of the primary's sizes (checked at the
//! Hello, which carries the sizes), its NICs on this node's own taps with the configured MACs,
//! and the CPU features its vCPUs use (both checked at the first State).
//!
//! Paths and tap names always come from this node (its supervisor's config, `--replica-disk`,
//! `--replica-net`), never from the wire: a primary can only name disk and NIC numbers.

use std::path::PathBuf;

use kvm_bindings::kvm_cpuid_entry2;

use crate::kvm::cpuid;
use crate::state::snapshot::Snapshot;

/// One NIC of the VM on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNet {
    pub tap: String,
    /// When given, the primary's state must carry this MAC (the config is the same file on
    /// both nodes; a mismatch means the two nodes disagree about the VM).
    pub mac: Option<[u8; 6]>,
}

/// The VM's devices on this node, in device order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalDevices {
    pub disks: Vec<PathBuf>,
    pub nets: Vec<LocalNet>,
}

impl LocalDevices {
    /// The Hello's disks against this node's: the same number, each image present (a missing
    /// one is created sparse at the primary's size: the full copy fills it) and of the same
    /// size.
    pub fn check_disks(&self, sizes: &[u64]) -> Result<(), String> {
        if sizes.len() != self.disks.len() {
            return Err(format!(
                "the VM has {} disks, this node has {} configured for it",
                sizes.len(),
                self.disks.len()
            ));
        }
        for (i, (path, &size)) in self.disks.iter().zip(sizes).enumerate() {
            match std::fs::metadata(path) {
                Ok(m) if m.len() == size => {}
                Ok(m) => {
                    return Err(format!(
                        "disk {i} ({}) is {} bytes here, {size} bytes on the primary",
                        path.display(),
                        m.len()
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    create_sparse(path, size)
                        .map_err(|e| format!("disk {i}: creating {}: {e}", path.display()))?;
                    log::info!(
                        "replica: created {} ({size} bytes, sparse) for disk {i}",
                        path.display()
                    );
                }
                Err(e) => return Err(format!("disk {i} ({}): {e}", path.display())),
            }
        }
        Ok(())
    }

    /// Rewrites the primary's state for this node: its disk paths and taps become ours.
    pub fn localize(&self, state: &mut Snapshot) -> Result<(), String> {
        if state.disks.len() != self.disks.len() {
            return Err(format!(
                "the VM's state has {} disks, this node has {} configured for it",
                state.disks.len(),
                self.disks.len()
            ));
        }
        if state.nets.len() != self.nets.len() {
            return Err(format!(
                "the VM's state has {} NICs, this node has {} configured for it",
                state.nets.len(),
                self.nets.len()
            ));
        }
        for (d, p) in state.disks.iter_mut().zip(&self.disks) {
            d.path = p.clone();
        }
        for (i, (n, local)) in state.nets.iter_mut().zip(&self.nets).enumerate() {
            if let Some(mac) = local.mac {
                if mac != n.mac {
                    return Err(format!(
                        "NIC {i} has MAC {} on the primary, {} in this node's config",
                        fmt_mac(n.mac),
                        fmt_mac(mac)
                    ));
                }
            }
            n.tap = local.tap.clone();
        }
        Ok(())
    }
}

fn create_sparse(path: &std::path::Path, size: u64) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.set_len(size)
}

fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Reads one register of a CPUID entry.
type Register = fn(&kvm_cpuid_entry2) -> u32;

/// The feature registers compared: (leaf, subleaf, register name, getter).
const FEATURES: &[(u32, u32, &str, Register)] = &[
    (1, 0, "ecx", |e| e.ecx),
    (1, 0, "edx", |e| e.edx),
    (7, 0, "ebx", |e| e.ebx),
    (7, 0, "ecx", |e| e.ecx),
    (7, 0, "edx", |e| e.edx),
    (0x8000_0001, 0, "ecx", |e| e.ecx),
    (0x8000_0001, 0, "edx", |e| e.edx),
];

/// Whether this node's KVM offers every CPU feature the VM's vCPUs were given on the primary
/// (`host` is this node's supported CPUID patched as the engine patches it). A vCPU that used
/// a feature this CPU lacks would fault after the takeover.
pub fn check_cpu(state: &Snapshot, host: &[kvm_cpuid_entry2]) -> Result<(), String> {
    let Some(vcpu) = state.vcpus.first() else {
        return Ok(());
    };
    for &(leaf, sub, reg, get) in FEATURES {
        let find = |list: &[kvm_cpuid_entry2]| {
            list.iter()
                .find(|e| e.function == leaf && (e.index == sub || leaf != 7))
                .map(get)
        };
        let Some(want) = find(&vcpu.cpuid) else {
            continue;
        };
        let have = find(host).unwrap_or(0);
        let missing = want & !have;
        if missing != 0 {
            return Err(format!(
                "the VM's vCPUs use CPUID leaf {leaf:#x} {reg} bits {missing:#010x}, which this \
                 node's CPU (KVM) does not offer"
            ));
        }
    }
    Ok(())
}

/// This node's CPUID as the engine would give a vCPU of a `cpus`-vCPU VM (for `check_cpu`).
pub fn host_cpuid(cpus: u8) -> Result<Vec<kvm_cpuid_entry2>, String> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| format!("opening /dev/kvm: {e}"))?;
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
    let deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    Ok(cpuid::for_vcpu(&supported, 0, cpus.max(1), deadline)
        .as_slice()
        .to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::test_support::{state, Scratch};
    use crate::spec::NetSpec;

    #[test]
    fn disks_are_checked_and_a_missing_one_is_created() {
        let dir = Scratch::new();
        let a = dir.0.join("a.img");
        std::fs::write(&a, vec![0u8; 4096]).unwrap();
        let b = dir.0.join("sub/b.img");
        let local = LocalDevices {
            disks: vec![a.clone(), b.clone()],
            nets: Vec::new(),
        };
        assert!(local
            .check_disks(&[4096])
            .unwrap_err()
            .contains("has 1 disks"));
        let err = local.check_disks(&[8192, 1024]).unwrap_err();
        assert!(err.contains("4096 bytes here, 8192"), "{err}");
        local.check_disks(&[4096, 1 << 20]).unwrap();
        assert_eq!(std::fs::metadata(&b).unwrap().len(), 1 << 20);
        // Present now, so checked like the other.
        local.check_disks(&[4096, 1 << 20]).unwrap();
    }

    #[test]
    fn the_state_gets_this_nodes_paths_and_taps_and_macs_must_agree() {
        let dir = Scratch::new();
        let mut st = state(2, &dir.0.join("primary.img"));
        st.nets = vec![NetSpec {
            tap: "tap-primary".into(),
            mac: [0x52, 0x54, 0, 1, 2, 3],
        }];
        let mut local = LocalDevices {
            disks: vec![dir.0.join("mine.img")],
            nets: vec![LocalNet {
                tap: "t-web-0".into(),
                mac: Some([0x52, 0x54, 0, 1, 2, 4]),
            }],
        };
        let err = local.localize(&mut st).unwrap_err();
        assert!(err.contains("52:54:00:01:02:03 on the primary"), "{err}");
        local.nets[0].mac = Some([0x52, 0x54, 0, 1, 2, 3]);
        local.localize(&mut st).unwrap();
        assert_eq!(st.disks[0].path, dir.0.join("mine.img"));
        assert_eq!(st.nets[0].tap, "t-web-0");
        // No local devices configured: refused, never the primary's paths.
        let none = LocalDevices::default();
        assert!(none.localize(&mut st).unwrap_err().contains("has 1 disks"));
    }

    #[test]
    fn a_cpu_feature_this_node_lacks_is_refused() {
        let dir = Scratch::new();
        let mut st = state(2, &dir.0.join("d.img"));
        let entry = |ecx| kvm_cpuid_entry2 {
            function: 1,
            ecx,
            ..Default::default()
        };
        assert!(
            check_cpu(&st, &[entry(0)]).is_ok(),
            "no vCPUs, nothing used"
        );
        let mut v = crate::state::vcpu::VcpuState::for_tests(0);
        v.cpuid = vec![entry(0b1011)];
        st.vcpus = vec![v];
        assert!(check_cpu(&st, &[entry(0b1111)]).is_ok());
        let err = check_cpu(&st, &[entry(0b0011)]).unwrap_err();
        assert!(err.contains("leaf 0x1 ecx bits 0x00000008"), "{err}");
    }
}
