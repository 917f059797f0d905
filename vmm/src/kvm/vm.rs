//! The KVM VM: /dev/kvm, the VM fd, the in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT, and
//! the CPUID KVM supports on this host.

use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};

use crate::layout::KVM_TSS_ADDRESS;

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("opening /dev/kvm: {0} (is the kvm module loaded and are you allowed to use it?)")]
    Open(kvm_ioctls::Error),
    #[error("KVM_{op}: {source}")]
    Ioctl {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM lacks {0}, which the engine needs")]
    MissingCap(&'static str),
}

pub struct KvmVm {
    pub kvm: Kvm,
    pub fd: VmFd,
    pub supported_cpuid: CpuId,
    pub tsc_deadline: bool,
}

/// Opens KVM and creates a VM with the in-kernel irqchip and PIT.
pub fn create() -> Result<KvmVm, KvmError> {
    let kvm = Kvm::new().map_err(KvmError::Open)?;
    let err = |op| move |source| KvmError::Ioctl { op, source };
    for (cap, name) in [
        (kvm_ioctls::Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (kvm_ioctls::Cap::Pit2, "KVM_CAP_PIT2"),
        (kvm_ioctls::Cap::Irqfd, "KVM_CAP_IRQFD"),
        (kvm_ioctls::Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    let fd = kvm.create_vm().map_err(err("CREATE_VM"))?;
    fd.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(err("SET_TSS_ADDR"))?;
    fd.create_irq_chip().map_err(err("CREATE_IRQCHIP"))?;
    // The PC speaker port is handled as a dummy in the kernel instead of exiting to us.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    fd.create_pit2(pit).map_err(err("CREATE_PIT2"))?;
    let supported_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(err("GET_SUPPORTED_CPUID"))?;
    let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    Ok(KvmVm {
        tsc_deadline,
        kvm,
        fd,
        supported_cpuid,
    })
}
