//! Everything KVM holds for one vCPU, read in the order that keeps it consistent (MP_STATE first
//! because it flushes pending LAPIC events; VCPU_EVENTS last because the other reads may change
//! it) and written back in the order KVM needs (CPUID first, MSRs with the TSC deadline after the
//! TSC, events last).

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use crate::kvm::msrs;

#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("vCPU {id}: KVM_{op}: {source}")]
    Ioctl {
        id: u8,
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: {source}")]
    Msr { id: u8, source: msrs::MsrError },
    #[error("vCPU {id}: CPUID in the state: {msg}")]
    Cpuid { id: u8, msg: String },
}

#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub vcpu_events: kvm_vcpu_events,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VcpuState {{ id: {}, rip: {:#x}, msrs: {} }}",
            self.id,
            self.regs.rip,
            self.msrs.len()
        )
    }
}

/// Reads the state of a vCPU that is not running (its thread is parked between KVM_RUNs).
pub fn save(
    id: u8,
    vcpu: &VcpuFd,
    cpuid: &CpuId,
    msr_list: &[u32],
) -> Result<VcpuState, VcpuStateError> {
    let io = |op| move |source| VcpuStateError::Ioctl { id, op, source };
    let mp_state = vcpu.get_mp_state().map_err(io("GET_MP_STATE"))?;
    let regs = vcpu.get_regs().map_err(io("GET_REGS"))?;
    let sregs = vcpu.get_sregs().map_err(io("GET_SREGS"))?;
    let xsave = vcpu.get_xsave().map_err(io("GET_XSAVE"))?;
    let xcrs = vcpu.get_xcrs().map_err(io("GET_XCRS"))?;
    let debugregs = vcpu.get_debug_regs().map_err(io("GET_DEBUGREGS"))?;
    let lapic = vcpu.get_lapic().map_err(io("GET_LAPIC"))?;
    let msrs = msrs::get(vcpu, msr_list).map_err(|source| VcpuStateError::Msr { id, source })?;
    let vcpu_events = vcpu.get_vcpu_events().map_err(io("GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        id,
        cpuid: cpuid.as_slice().to_vec(),
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        lapic,
        msrs,
        vcpu_events,
    })
}

/// Writes a saved state into a freshly created vCPU.
pub fn restore(vcpu: &VcpuFd, s: &VcpuState) -> Result<(), VcpuStateError> {
    let id = s.id;
    let io = |op| move |source| VcpuStateError::Ioctl { id, op, source };
    let cpuid = CpuId::from_entries(&s.cpuid).map_err(|e| VcpuStateError::Cpuid {
        id,
        msg: format!("{e:?}"),
    })?;
    vcpu.set_cpuid2(&cpuid).map_err(io("SET_CPUID2"))?;
    vcpu.set_mp_state(s.mp_state).map_err(io("SET_MP_STATE"))?;
    vcpu.set_regs(&s.regs).map_err(io("SET_REGS"))?;
    vcpu.set_sregs(&s.sregs).map_err(io("SET_SREGS"))?;
    // SAFETY: kvm_xsave is the fixed 4 KiB legacy layout KVM_GET_XSAVE produced, so KVM reads
    // exactly the struct we pass.
    unsafe { vcpu.set_xsave(&s.xsave) }.map_err(io("SET_XSAVE"))?;
    vcpu.set_xcrs(&s.xcrs).map_err(io("SET_XCRS"))?;
    vcpu.set_debug_regs(&s.debugregs)
        .map_err(io("SET_DEBUGREGS"))?;
    vcpu.set_lapic(&s.lapic).map_err(io("SET_LAPIC"))?;
    let mut m = s.msrs.clone();
    msrs::restore_order(&mut m);
    msrs::set(vcpu, &m).map_err(|source| VcpuStateError::Msr { id, source })?;
    vcpu.set_vcpu_events(&s.vcpu_events)
        .map_err(io("SET_VCPU_EVENTS"))?;
    Ok(())
}

#[cfg(test)]
impl VcpuState {
    /// A vCPU state with every register zero (tests that never run it).
    pub fn for_tests(id: u8) -> VcpuState {
        VcpuState {
            id,
            cpuid: Vec::new(),
            mp_state: Default::default(),
            regs: Default::default(),
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            debugregs: Default::default(),
            lapic: Default::default(),
            msrs: Vec::new(),
            vcpu_events: Default::default(),
        }
    }
}
