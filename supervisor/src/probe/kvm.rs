//! Whether this node can run VMs: /dev/kvm opens and a hardware KVM module (kvm_amd or kvm_intel) is
//! loaded. Paravirtual flavours (kvm_pvm on the build hosts) do not count: they hang ordinary guests.

use crate::status::KvmStatus;
use std::fs::OpenOptions;
use std::path::Path;

/// The hardware KVM modules, in the order they are reported.
const MODULES: [&str; 2] = ["kvm_amd", "kvm_intel"];

pub fn probe() -> KvmStatus {
    probe_at(Path::new("/dev/kvm"), Path::new("/sys/module"))
}

/// `probe` with the paths as arguments, for tests.
pub fn probe_at(dev: &Path, sys_module: &Path) -> KvmStatus {
    if let Err(e) = OpenOptions::new().read(true).write(true).open(dev) {
        return KvmStatus::Unavailable {
            reason: format!("{}: {e}", dev.display()),
        };
    }
    match MODULES.iter().find(|m| sys_module.join(m).exists()) {
        Some(m) => KvmStatus::Available {
            module: m.to_string(),
        },
        None => KvmStatus::Unavailable {
            reason: format!(
                "{} opens but neither kvm_amd nor kvm_intel is loaded",
                dev.display()
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn reports_why() {
        let dir = std::env::temp_dir().join(format!("havms-kvm-test-{}", std::process::id()));
        let modules = dir.join("module");
        fs::create_dir_all(&modules).unwrap();
        let dev = dir.join("kvm");

        let missing = probe_at(&dev, &modules);
        assert!(
            matches!(&missing, KvmStatus::Unavailable { reason } if reason.contains("No such file"))
        );

        // A plain file stands in for the device node: what matters here is which module is reported.
        fs::write(&dev, b"").unwrap();
        let no_module = probe_at(&dev, &modules);
        assert!(
            matches!(&no_module, KvmStatus::Unavailable { reason } if reason.contains("neither"))
        );

        fs::create_dir(modules.join("kvm_intel")).unwrap();
        assert_eq!(
            probe_at(&dev, &modules),
            KvmStatus::Available {
                module: "kvm_intel".into()
            }
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
