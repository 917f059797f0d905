//! KVM: which vendor module the CPU needs, and the `/dev/kvm` boot message.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::logger;
use crate::modules::KvmVendor;

/// The vendor module for a CPU, from the `flags` lines of /proc/cpuinfo.
pub fn vendor_from_cpuinfo(cpuinfo: &str) -> Result<&'static str, String> {
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f)
        .ok_or_else(|| "no flags line in /proc/cpuinfo".to_string())?;
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    if has("svm") {
        Ok("kvm_amd")
    } else if has("vmx") {
        Ok("kvm_intel")
    } else {
        Err("the CPU has neither vmx nor svm (virtualization disabled in the firmware?)".into())
    }
}

pub fn vendor_module() -> Result<&'static str, String> {
    let text = std::fs::read_to_string("/proc/cpuinfo")
        .map_err(|e| format!("cannot read /proc/cpuinfo: {e}"))?;
    vendor_from_cpuinfo(&text)
}

fn loaded_vendor() -> Option<&'static str> {
    ["kvm_amd", "kvm_intel"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).exists())
}

/// Says whether /dev/kvm is usable. devtmpfs creates the node asynchronously after the module
/// registers it, so give it a moment.
pub fn report(vendor: &KvmVendor) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !Path::new("/dev/kvm").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if Path::new("/dev/kvm").exists() {
        let module = loaded_vendor().unwrap_or("built in");
        logger::say(&format!("/dev/kvm ready ({module})"));
        return;
    }
    let reason = match vendor {
        KvmVendor::Failed(r) => r.clone(),
        KvmVendor::NotRequested => "kvm-vendor is not in the modules list".to_string(),
        KvmVendor::Loaded(m) => format!("{m} loaded but /dev/kvm did not appear"),
    };
    logger::say(&format!("no /dev/kvm: {reason}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_vendor_from_flags() {
        let amd = "processor\t: 0\nflags\t\t: fpu vme svm lm\nbugs\t: sysret_ss_attrs\n";
        assert_eq!(vendor_from_cpuinfo(amd), Ok("kvm_amd"));
        let intel = "flags\t\t: fpu vmx ssse3\n";
        assert_eq!(vendor_from_cpuinfo(intel), Ok("kvm_intel"));
        // `svm_lock` or `vmx_foo` style words must not count.
        let neither = "flags\t\t: fpu svm_lock vmxx\n";
        assert!(vendor_from_cpuinfo(neither)
            .unwrap_err()
            .contains("neither vmx nor svm"));
        assert!(vendor_from_cpuinfo("processor : 0\n").is_err());
    }
}
