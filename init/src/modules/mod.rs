//! Kernel modules: the boot-time list, dependency resolution and loading.

pub mod dep;
pub mod list;
pub mod load;

use crate::cmdline::KernelArgs;
use crate::logger;
use list::{Entry, KVM_VENDOR};
use load::Loader;

/// What the KVM vendor module did, for the `/dev/kvm` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmVendor {
    /// `kvm-vendor` was not in the list.
    NotRequested,
    Loaded(String),
    Failed(String),
}

/// Loads the list then `havms.extra_modules=`, reporting each failure on the console.
pub fn load_boot_modules(loader: &mut Loader, list: &[Entry], args: &KernelArgs) -> KvmVendor {
    let extra = args.extra_modules.iter().map(|name| Entry {
        name: name.clone(),
        params: String::new(),
        line: 0,
    });
    let entries: Vec<Entry> = list.iter().cloned().chain(extra).collect();
    for e in &entries {
        loader.add_params(&e.name, &e.params);
    }
    for (module, param) in &args.module_params {
        loader.add_params(module, param);
    }
    if let Some(e) = loader.db_error() {
        log::error!("modules: {e}");
    }
    let mut kvm = KvmVendor::NotRequested;
    for e in &entries {
        let name = if e.name == KVM_VENDOR {
            match crate::kvm::vendor_module() {
                Ok(m) => m.to_string(),
                Err(reason) => {
                    logger::say(&format!("module {KVM_VENDOR} failed: {reason}"));
                    kvm = KvmVendor::Failed(reason);
                    continue;
                }
            }
        } else {
            e.name.clone()
        };
        let result = loader.load(&name);
        if e.name == KVM_VENDOR {
            kvm = match &result {
                Ok(_) => KvmVendor::Loaded(name.clone()),
                Err(reason) => KvmVendor::Failed(format!("{name}: {reason}")),
            };
        }
        if let Err(reason) = result {
            logger::say(&format!("module {name} failed: {reason}"));
        }
    }
    kvm
}
