//! havms-vmm: the HAVmS VM engine, built on the rust-vmm crates (kvm-ioctls, vm-memory,
//! linux-loader, vm-superio).
//!
//! The API the supervisor uses is small:
//!
//! ```no_run
//! use havms_vmm::{Vm, VmSpec};
//! let mut spec = VmSpec::new("/boot/vmlinuz");
//! spec.initramfs = Some("/boot/initrd.img".into());
//! spec.cpus = 2;
//! let vm = Vm::create(&spec)?;          // KVM VM, memory, kernel loaded, vCPUs set up
//! vm.start()?;                          // vCPU threads run
//! vm.pause()?;                          // all vCPUs parked between two KVM_RUNs
//! vm.snapshot(std::path::Path::new("/tmp/snap"))?; // state.json + memory.bin
//! vm.resume()?;
//! let why = vm.wait();                  // blocks until power off / reset / shutdown / error
//! # Ok::<(), havms_vmm::VmError>(())
//! ```
//!
//! `Vm::restore(dir, serial)` rebuilds a VM from a snapshot in a fresh process; after `start()`
//! the guest continues where it was captured.
//!
//! A `Vm` ends when the guest resets. `Machine` is the guest across reboots: it builds a new
//! `Vm` from the same spec on the same console each time, as Cloud Hypervisor does:
//!
//! ```no_run
//! use havms_vmm::{Machine, OnReset, VmSpec};
//! let m = Machine::boot(VmSpec::new("/boot/vmlinuz"), OnReset::Reboot)?;
//! let m2 = m.clone();                   // e.g. for the API server: acts on the current VM
//! std::thread::spawn(move || { m2.vm().map(|vm| vm.pause()) });
//! let why = m.run();                    // power off / shutdown / error; resets reboot
//! println!("ended after {} boots: {why}", m.boots());
//! # Ok::<(), havms_vmm::VmError>(())
//! ```

pub mod api;
pub mod boot;
pub mod console;
pub mod devices;
pub mod events;
pub mod exit;
pub mod kvm;
pub mod layout;
pub mod machine;
pub mod memory;
pub mod replication;
pub mod spec;
pub mod state;
mod sync;
pub mod virtio;
pub mod vm;

pub use console::Console;
pub use exit::ExitReason;
pub use machine::{Machine, OnReset};
pub use spec::{DiskSpec, NetSpec, SerialSpec, SpecError, VmSpec};
pub use vm::{serial_output as vm_serial_output, Vm, VmError, VmInfo};

/// An error and its causes on one line, `a: b: c`, leaving out a cause whose text the message
/// before it already ends with (our errors print their source, as thiserror messages often do).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !out.ends_with(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("opening {path}: {source}")]
    struct Open {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn error_chain_does_not_repeat_sources() {
        let e = Open {
            path: "/k".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        };
        assert_eq!(super::error_chain(&e), "opening /k: gone");
    }
}
