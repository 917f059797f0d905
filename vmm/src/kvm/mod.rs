//! KVM: the VM file descriptor and its in-kernel devices (`vm`), per-vCPU setup (`cpuid`, `msrs`,
//! `regs`) and the vCPU threads (`vcpu`).

pub mod cpuid;
pub mod msrs;
pub mod regs;
pub mod vcpu;
pub mod vm;
